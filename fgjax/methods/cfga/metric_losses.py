"""Deep-metric-learning losses of CFGA's baselines (shared/methods/cfga.md section 7).

Pure float32 `jnp` functions, jittable and differentiable (no NaN gradient on the masked,
skipped or degenerate entries). Sources, read for facts:

- `multi_similarity_loss`: msight-tech/research-ms-loss `ret_benchmark/losses/
  multi_similarity_loss.py` (the same code is CFGA_CARS196_train `about_msloss/ms_loss.py`).
- `cosface_logits`, `arcface_logits`: CFGA_CARS196_train `cosface.py` (AddMarginProduct,
  ArcMarginProduct of ronghuaiyang/arcface-pytorch); the loss is
  `objectives.cross_entropy(logits, labels)`.
- `proxy_anchor_loss`: tjddus9597/Proxy-Anchor-CVPR2020 `code/losses.py` (Proxy_Anchor).
- `dgpcrl_loss`: CFGA_CARS196_train `train_DGPCRL.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fgjax.core.objectives import l2_normalize

# research-ms-loss drops same-label pairs with S >= 1 - 1e-5 from the positives: the anchor
# itself (and exact duplicates of it).
SELF_SIMILARITY_EPS = 1e-5


def _check_batch(fn: str, x: jax.Array, labels: jax.Array, name: str = "embeddings") -> None:
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(
            f"metric_losses.{fn}: {name} must be [B, D] and labels [B], got "
            f"{name} {x.shape} and labels {labels.shape}"
        )


def _log1p_sum_exp(z: jax.Array, keep: jax.Array, axis: int) -> jax.Array:
    """`log(1 + sum_{keep} exp(z))` along `axis`: 0 where nothing is kept.

    Dropped entries become -inf before a stable logsumexp (with the `1` as a zero logit), so
    neither their value nor their gradient can overflow.
    """
    z = jnp.where(keep, z, -jnp.inf)
    zero = jnp.zeros_like(jnp.sum(z, axis=axis, keepdims=True))
    return jax.nn.logsumexp(jnp.concatenate([zero, z], axis=axis), axis=axis)


def multi_similarity_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 2.0,
    beta: float = 40.0,
    base: float = 0.5,
    margin: float = 0.1,
) -> jax.Array:
    """Multi-Similarity loss (Wang et al., CVPR 2019) as research-ms-loss computes it.

    `embeddings` [B, D] are used as given (the model L2-normalises them; S = X X^T),
    `labels` [B] int. For anchor i:

    - positives P_i = {j : y_j = y_i, S_ij < 1 - 1e-5} (self excluded by similarity),
      negatives N_i = {j : y_j != y_i};
    - mining: keep negatives with S_ij + margin > min_{P_i} S, positives with
      S_ij - margin < max_{N_i} S; skip the anchor when either kept set is empty;
    - l_i = (1/alpha) log(1 + sum_{kept P} exp(-alpha (S - base)))
          + (1/beta) log(1 + sum_{kept N} exp(beta (S - base))).

    Returns the scalar `sum_i l_i / B` (skipped anchors count 0, the divisor stays B).
    """
    _check_batch("multi_similarity_loss", embeddings, labels)
    x = embeddings.astype(jnp.float32)
    sim = x @ x.T
    same = labels[:, None] == labels[None, :]
    pos = same & (sim < 1.0 - SELF_SIMILARITY_EPS)
    neg = ~same
    # Mining only selects pairs (boolean masks): no gradient flows through the thresholds.
    mined = jax.lax.stop_gradient(sim)
    hardest_pos = jnp.min(jnp.where(pos, mined, jnp.inf), axis=1, keepdims=True)
    hardest_neg = jnp.max(jnp.where(neg, mined, -jnp.inf), axis=1, keepdims=True)
    keep_pos = pos & (mined - margin < hardest_neg)
    keep_neg = neg & (mined + margin > hardest_pos)
    pos_term = _log1p_sum_exp(-alpha * (sim - base), keep_pos, axis=1) / alpha
    neg_term = _log1p_sum_exp(beta * (sim - base), keep_neg, axis=1) / beta
    # In exact arithmetic one kept set is empty only when the other is (the terms are then
    # log 1 = 0); the reference still tests both, which decides float ties at the margin.
    valid = jnp.any(keep_pos, axis=1) & jnp.any(keep_neg, axis=1)
    return jnp.sum(jnp.where(valid, pos_term + neg_term, 0.0)) / x.shape[0]


def _cosines(embeddings: jax.Array, weights: jax.Array) -> jax.Array:
    """cos(x_b, w_c) [B, C] with torch's `F.normalize` on both (embeddings [B, D], weights
    [C, D])."""
    x = l2_normalize(embeddings.astype(jnp.float32))
    return x @ l2_normalize(weights.astype(jnp.float32)).T


def cosface_logits(
    embeddings: jax.Array,
    weights: jax.Array,
    labels: jax.Array,
    *,
    scale: float,
    margin: float,
) -> jax.Array:
    """CosFace (AddMarginProduct) logits [B, C]: `s (cos theta_y - m)` for the true class,
    `s cos theta_j` elsewhere; cos from L2-normalised `embeddings` [B, D] and `weights` rows
    [C, D]. CFGA's Cars recipe: s = 50, m = 0.5."""
    _check_batch("cosface_logits", embeddings, labels)
    cos = _cosines(embeddings, weights)
    target = jax.nn.one_hot(labels, cos.shape[1], dtype=jnp.bool_)
    return scale * jnp.where(target, cos - margin, cos)


def arcface_logits(
    embeddings: jax.Array,
    weights: jax.Array,
    labels: jax.Array,
    *,
    scale: float,
    margin: float,
) -> jax.Array:
    """ArcFace (ArcMarginProduct, non-easy margin) logits [B, C], margin in radians.

    True class: `s phi` with phi = cos theta cos m - sin theta sin m = cos(theta + m) where
    cos theta > cos(pi - m), else the monotone fallback phi = cos theta - sin(pi - m) m;
    sin theta = sqrt(clamp(1 - cos^2, 0, 1)). Other classes: `s cos theta`. Both
    `embeddings` [B, D] and `weights` rows [C, D] are L2-normalised. Cars: s = 50, m = 0.5.
    """
    _check_batch("arcface_logits", embeddings, labels)
    cos = _cosines(embeddings, weights)
    sin2 = jnp.clip(1.0 - cos**2, 0.0, 1.0)
    # sqrt has an infinite derivative at 0 (cos = +-1): route those entries around it.
    inside = sin2 > 0.0
    sine = jnp.where(inside, jnp.sqrt(jnp.where(inside, sin2, 1.0)), 0.0)
    phi = cos * jnp.cos(margin) - sine * jnp.sin(margin)
    phi = jnp.where(cos > jnp.cos(jnp.pi - margin), phi, cos - jnp.sin(jnp.pi - margin) * margin)
    target = jax.nn.one_hot(labels, cos.shape[1], dtype=jnp.bool_)
    return scale * jnp.where(target, phi, cos)


def proxy_anchor_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    proxies: jax.Array,
    *,
    alpha: float = 32.0,
    delta: float = 0.1,
) -> jax.Array:
    """Proxy-Anchor loss (Kim et al., CVPR 2020), as Proxy-Anchor-CVPR2020 `losses.py`.

    cos [B, C] between L2-normalised `embeddings` [B, D] and `proxies` [C, D]; `labels` [B]
    in [0, C). With P+ the proxies that have a positive in the batch and X_c+ / X_c- the
    samples of / not of class c:

        L = 1/|P+| sum_{c in P+} log(1 + sum_{x in X_c+} exp(-alpha (cos(x, c) - delta)))
          + 1/C    sum_{c}       log(1 + sum_{x in X_c-} exp( alpha (cos(x, c) + delta)))

    (the reference normalises with sqrt(sum x^2 + 1e-12) where this uses max(norm, 1e-12):
    equal for any non-degenerate vector).
    """
    _check_batch("proxy_anchor_loss", embeddings, labels)
    num_classes = proxies.shape[0]
    cos = _cosines(embeddings, proxies)
    member = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)
    pos_term = _log1p_sum_exp(-alpha * (cos - delta), member, axis=0)
    neg_term = _log1p_sum_exp(alpha * (cos + delta), ~member, axis=0)
    # Proxies without positives contribute log(1) = 0 to the sum but are left out of |P+|.
    num_with_pos = jnp.sum(jnp.any(member, axis=0))
    return jnp.sum(pos_term) / jnp.maximum(num_with_pos, 1) + jnp.sum(neg_term) / num_classes


def dgpcrl_loss(
    logits: jax.Array,
    labels: jax.Array,
    classifier: jax.Array,
    *,
    threshold: float = 0.7,
    decorrelation: float = 0.1,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DGPCRL loss of CFGA_CARS196_train `train_DGPCRL.py` (spec 7.5).

    `logits` [B, C] = W (100 z / |z|), `labels` [B], `classifier` W [C, D] (no bias).
    p = softmax(logits); sigma_i = +1 if p_{y_i} >= threshold else -1 (no gradient):

        L_cls = (1/B) sum_i sigma_i log p_{y_i}      (plain CE below the threshold; above it
                                                      p_y is pushed back down)
        L_dec = (1/C^2) sum_{a,b} ((W W^T)_{ab} - delta_ab)^2
        L     = L_cls + decorrelation L_dec

    Returns `(L, {'classification': L_cls, 'decorrelation': L_dec})`.
    """
    _check_batch("dgpcrl_loss", logits, labels, name="logits")
    if classifier.ndim != 2 or classifier.shape[0] != logits.shape[1]:
        raise ValueError(
            f"metric_losses.dgpcrl_loss: classifier must be [C, D] with C = {logits.shape[1]} "
            f"(the logits' classes), got {classifier.shape}"
        )
    # log_softmax: the reference's log(softmax) without its underflow to -inf.
    log_p = jnp.take_along_axis(
        jax.nn.log_softmax(logits.astype(jnp.float32), axis=1), labels[:, None], axis=1
    )[:, 0]
    sign = jax.lax.stop_gradient(jnp.where(jnp.exp(log_p) >= threshold, 1.0, -1.0))
    classification = jnp.mean(sign * log_p)
    w = classifier.astype(jnp.float32)
    gram = w @ w.T
    dec = jnp.mean(jnp.square(gram - jnp.eye(w.shape[0], dtype=jnp.float32)))
    return classification + decorrelation * dec, {
        "classification": classification,
        "decorrelation": dec,
    }
