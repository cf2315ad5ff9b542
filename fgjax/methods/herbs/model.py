"""HERBS head (Chou et al. 2023, arXiv 2303.06442) in Flax Linen: FPN down/up paths,
per-token classifiers, the background-suppression selector and the GCN combiner.

It consumes the four Swin taps `layer1..layer4` (`[B, S_k, C_k]`, row-major tokens, see
`fgjax.models.swin.Swin`) and returns the original model's dict of logits
(shared/methods/herbs.md section 3):

  FPN1_layer{k}    [B, S_k, N]      first-pass (top-down) per-token logits
  layer{k}         [B, S_k, N]      refined (bottom-up) per-token logits
  select_layer{k}  [B, K_k, N]      refined logits of the K_k most confident tokens
  drop_layer{k}    [B, S_k-K_k, N]  refined logits of the other tokens
  comb_outs        [B, N]           GCN combiner over the selected features

Parameter paths are the PyTorch `best.pt` keys split on '.', so the key map in
`fgjax.methods.herbs.keys` is one rule (`fpn_down.Proj_layer1.0.weight` ->
`params/fpn_down/Proj_layer1/0/kernel`). Numerics that matter for parity: PyTorch default
init U(+-1/sqrt(fan_in)), BatchNorm eps 1e-5 with unbiased running variance
(`fgjax.models.norm.BatchNorm`), token-axis maps learned per (S_out, S_in) pair, and the
selector ranking on the softmax confidence of each level's image-level argmax class.

Parameters are float32; `dtype` is the compute dtype. Logits come out in float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fgjax.models.hooks import grad_cam_point
from fgjax.models.norm import BatchNorm

Array = jnp.ndarray


def torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's Linear/Conv1d default for weights AND biases: U(-1/sqrt(fan_in), +...)."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _linear(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
    init = torch_uniform(fan_in)
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=init,
        bias_init=init,
        name=name,
    )


def token_mix(x: Array, out_tokens: int, dtype: Any, name: str) -> Array:
    """Learned linear map over the TOKEN axis: `[B, S_in, D]` -> `[B, out_tokens, D]`.

    HERBS' `Conv1d(S_in, S_out, 1)` on a `[B, S, D]` tensor (tokens act as channels):
    y[b, o, d] = sum_i W[o, i] x[b, i, d] + bias[o]. Kernel `[S_in, S_out]`. This is the
    FPN's "upsampling" / "downsampling", so it depends on the row-major token order.
    """
    y = _linear(out_tokens, x.shape[1], dtype, name)(x.swapaxes(1, 2))
    return y.swapaxes(1, 2)


class TwoLayerProj(nn.Module):
    """`Linear(C, hidden) -> ReLU -> Linear(hidden, out)` per token; children `0`, `2`
    as in the PyTorch Sequential. `[B, S, C]` -> `[B, S, out]`."""

    hidden: int
    out: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.relu(_linear(self.hidden, x.shape[-1], self.dtype, "0")(x))
        return _linear(self.out, self.hidden, self.dtype, "2")(x)


class TokenClassifier(nn.Module):
    """Per-token `Conv1x1(D, D) -> BatchNorm -> ReLU -> Conv1x1(D, N)`; children `0`, `1`,
    `3` as in the PyTorch Sequential. BatchNorm statistics over batch and tokens.
    `[B, S, D]` -> `[B, S, N]` float32."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        d = x.shape[-1]
        x = _linear(d, d, self.dtype, "0")(x)
        x = nn.relu(BatchNorm(dtype=self.dtype, name="1")(x, train))
        return _linear(self.num_classes, d, self.dtype, "3")(x).astype(jnp.float32)


class FPNDown(nn.Module):
    """Projection to D and the top-down path (PyTorch `fpn_down`).

    F'_k = Proj_layer{k}(F_k) (C_k -> C_k -> D); P_L = F'_L and, coarse to fine,
    P_k = F'_k + Up_layer{k+1}(P_{k+1}) with a token-axis map S_{k+1} -> S_k.
    `taps[k]: [B, S_k, C_k]` -> `[P_1..P_L]`, each `[B, S_k, D]`.
    """

    fpn_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, taps: Sequence[Array]) -> list[Array]:
        # F'_k is a Grad-CAM place of HERBS' heat maps (spec 6.3), before any use.
        proj = [
            grad_cam_point(
                self,
                f"Proj_layer{k + 1}_out",
                TwoLayerProj(f.shape[-1], self.fpn_size, self.dtype, name=f"Proj_layer{k + 1}")(f),
            )
            for k, f in enumerate(taps)
        ]
        p = list(proj)
        for k in range(len(taps) - 2, -1, -1):
            up = token_mix(p[k + 1], taps[k].shape[1], self.dtype, f"Up_layer{k + 2}")
            p[k] = proj[k] + up
        return p


class FPNUp(nn.Module):
    """The bottom-up refinement path (PyTorch `fpn_up`, class `FPN_UP`).

    Q_k = Proj_layer{k}(P_k) (D -> D -> D); N_1 = Q_1 and, fine to coarse,
    N_k = Q_k + Down_layer{k-1}(N_{k-1}) with a token-axis map S_{k-1} -> S_k.
    `[P_1..P_L]` -> `[N_1..N_L]`, each `[B, S_k, D]`.
    """

    fpn_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, p: Sequence[Array]) -> list[Array]:
        # Q_k is a Grad-CAM place of HERBS' heat maps (spec 6.3), before any use.
        q = [
            grad_cam_point(
                self,
                f"Proj_layer{k + 1}_out",
                TwoLayerProj(self.fpn_size, self.fpn_size, self.dtype, name=f"Proj_layer{k + 1}")(
                    x
                ),
            )
            for k, x in enumerate(p)
        ]
        n = list(q)
        for k in range(1, len(p)):
            n[k] = q[k] + token_mix(n[k - 1], p[k].shape[1], self.dtype, f"Down_layer{k}")
        return n


class Selection(NamedTuple):
    """What `weakly_select` keeps and drops for one level (K = num_select)."""

    features: Array  # [B, K, D] features of the kept tokens, most confident first
    selected: Array  # [B, K, N] their logits
    dropped: Array  # [B, S-K, N] logits of the other tokens (descending confidence)
    ranking: Array  # [B, S] int32 token indices by descending confidence; [:, :K] kept
    scores: Array  # [B, S] float32 confidence the ranking sorts


def weakly_select(features: Array, logits: Array, num_select: int) -> Selection:
    """Background suppression's token split for one level (PyTorch `WeaklySelector`).

    `features: [B, S, D]` (refined N_k), `logits: [B, S, N]` (refined Y^u_k). Per sample,
    c* = argmax of the token-averaged logits (the PREDICTED class, never the label); a
    token's score is softmax(logits)[c*]; the `num_select` highest-scoring tokens are kept,
    in descending order (the combiner's first layer mixes token positions, so order
    matters). All shapes are static; the ranking carries no gradient, the gathered
    features and logits do (only at the gathered tokens).
    """
    s = logits.shape[1]
    if not 0 < num_select < s:
        # HERBS reads the score at rank K, and the suppression loss averages the dropped
        # tokens: both need 1 <= K < S.
        raise ValueError(f"num_select must be in [1, {s - 1}] for {s} tokens, got {num_select}")
    logits32 = logits.astype(jnp.float32)
    target = jnp.argmax(logits32.mean(axis=1), axis=-1)  # [B]; softmax is monotonic
    probs = jax.nn.softmax(logits32, axis=-1)
    scores = jnp.take_along_axis(probs, target[:, None, None], axis=2)[..., 0]  # [B, S]
    _, ranking = jax.lax.top_k(jax.lax.stop_gradient(scores), s)  # full descending order

    def gather(x: Array, idx: Array) -> Array:
        return jnp.take_along_axis(x, idx[:, :, None], axis=1)

    keep, drop = ranking[:, :num_select], ranking[:, num_select:]
    return Selection(
        features=gather(features, keep),
        selected=gather(logits, keep),
        dropped=gather(logits, drop),
        ranking=ranking,
        scores=scores,
    )


class GCNCombiner(nn.Module):
    """Graph-convolution combiner over the selected tokens (PyTorch `GCNCombiner`).

    `h: [B, T, D]` (T = sum K_k, levels concatenated in rank order) -> `[B, N]` float32:
    pool tokens to J = T // tokens_per_node nodes (param_pool0, Linear over the token
    axis), adjacency A = adj1 + alpha1 * tanh(q_i - k_j) with q, k the channel means of
    conv_q1 / conv_k1 (D -> D/4), Z = conv1(X) @ A, BatchNorm over (batch, nodes) with no
    nonlinearity, pool nodes to one (param_pool1), dropout, classifier. Nodes are kept
    channels-last, `[B, J, D]`.
    """

    num_classes: int
    tokens_per_node: int = 64
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, train: bool) -> Array:
        _, t, d = h.shape
        nodes = t // self.tokens_per_node
        if nodes < 1:
            raise ValueError(
                f"{t} selected tokens give no graph node ({self.tokens_per_node}/node)"
            )
        x = _linear(nodes, t, self.dtype, "param_pool0")(h.swapaxes(1, 2)).swapaxes(1, 2)
        q = _linear(d // 4, d, self.dtype, "conv_q1")(x).astype(jnp.float32).mean(-1)  # [B, J]
        k = _linear(d // 4, d, self.dtype, "conv_k1")(x).astype(jnp.float32).mean(-1)
        adj = self.param("adj1", lambda _, shape: jnp.eye(shape[0]) / 100 + 1 / 100, (nodes, nodes))
        alpha = self.param("alpha1", nn.initializers.zeros, (1,), jnp.float32)
        a = adj + alpha * jnp.tanh(q[:, :, None] - k[:, None, :])  # [B, J, J], a[b, i, j]
        z = jnp.einsum("bid,bij->bjd", _linear(d, d, self.dtype, "conv1")(x), a.astype(x.dtype))
        z = BatchNorm(dtype=self.dtype, name="batch_norm1")(z, train)
        z = _linear(1, nodes, self.dtype, "param_pool1")(z.swapaxes(1, 2))[..., 0]  # [B, D]
        # flax Dropout asks for an rng even at rate 0; rate 0 is how parity tests train.
        z = nn.Dropout(self.dropout)(z, deterministic=not train or self.dropout == 0.0)
        return _linear(self.num_classes, d, self.dtype, "classifier")(z).astype(jnp.float32)


class HerbsHead(nn.Module):
    """The HERBS plug-in head on L backbone taps (L = len(num_selects), 4 for Swin).

    Attributes:
      num_classes: N (200 for CUB).
      fpn_size: D, the common width of every level (1536 in HERBS).
      num_selects: K_k tokens kept per level (HERBS: 256, 128, 64, 32; each < S_k).
      tokens_per_node: the combiner has sum(K_k) // tokens_per_node graph nodes (HERBS
        hard-codes 64, giving 7 nodes); a field only so tiny models get several nodes.
      comb_dropout: dropout before the combiner's classifier (needs rng 'dropout' when
        training).
      dtype: compute dtype.

    `taps`: `{'layer1': [B, S_1, C_1], ..., 'layerL': ...}` (other keys such as Swin's
    `pooled` are ignored). `train` switches the nine BatchNorms to batch statistics
    (apply with `mutable=['batch_stats']`) and turns dropout on. Returns the dict in the
    module docstring; Swin-L/384 + CUB: S = 2304, 576, 144, 144, N = 200, comb `[B, 200]`.
    """

    num_classes: int
    fpn_size: int = 1536
    num_selects: Sequence[int] = (256, 128, 64, 32)
    tokens_per_node: int = 64
    comb_dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, taps: Mapping[str, Array], train: bool = False) -> dict[str, Array]:
        names = [f"layer{k + 1}" for k in range(len(self.num_selects))]
        missing = [n for n in names if n not in taps]
        if missing:
            raise KeyError(f"HerbsHead needs taps {names}; missing {missing}")
        feats = [taps[n].astype(self.dtype) for n in names]
        out: dict[str, Array] = {}

        p = FPNDown(self.fpn_size, self.dtype, name="fpn_down")(feats)
        for name, x in zip(names, p, strict=True):
            cls = TokenClassifier(self.num_classes, self.dtype, name=f"fpn_classifier_down_{name}")
            out[f"FPN1_{name}"] = cls(x, train)

        n = FPNUp(self.fpn_size, self.dtype, name="fpn_up")(p)
        kept = []
        for name, x, k in zip(names, n, self.num_selects, strict=True):
            cls = TokenClassifier(self.num_classes, self.dtype, name=f"fpn_classifier_up_{name}")
            logits = cls(x, train)
            sel = weakly_select(x, logits, k)
            out[name] = logits
            out[f"select_{name}"] = sel.selected
            out[f"drop_{name}"] = sel.dropped
            kept.append(sel.features)

        out["comb_outs"] = GCNCombiner(
            self.num_classes,
            self.tokens_per_node,
            self.comb_dropout,
            self.dtype,
            name="combiner",
        )(jnp.concatenate(kept, axis=1), train)
        return out
