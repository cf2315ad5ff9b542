"""methods.cfga.metric_losses against per-sample numpy loops (written from the reference repos'
formulas, separately from the vectorised jnp code) and against pytorch-metric-learning
values and torch autograd gradients saved by tests/fixtures/make_metric_loss_fixtures.py
(this file never imports torch).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_refs import unit

from fgjax.core.objectives import cross_entropy
from fgjax.methods.cfga import metric_losses as ml

FIXTURE = Path(__file__).parent / "fixtures" / "metric_losses.npz"
S, M = 50.0, 0.5  # CFGA's CosFace / ArcFace scale and margin (spec 7.2, 7.3)


@functools.cache
def _fixture() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as f:
        return dict(f)


def _close(actual, expected, rtol=1e-5, atol=1e-5) -> None:
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


# ---- numpy references: one anchor / sample / proxy at a time, in float64 -------------------


def ms_np(x, y, alpha=2.0, beta=40.0, base=0.5, margin=0.1):
    """research-ms-loss's loop; per-anchor losses (0 where skipped) and the loss (/ B).
    (The original would crash on an anchor without any positive; here it is skipped.)"""
    x = np.asarray(x, np.float64)
    per = np.zeros(len(y))
    for i in range(len(y)):
        pos = [float(x[i] @ x[j]) for j in range(len(y)) if y[j] == y[i]]
        pos = [s for s in pos if s < 1 - 1e-5]
        neg = [float(x[i] @ x[j]) for j in range(len(y)) if y[j] != y[i]]
        if not pos or not neg:
            continue
        kept_neg = [s for s in neg if s + margin > min(pos)]
        kept_pos = [s for s in pos if s - margin < max(neg)]
        if not kept_neg or not kept_pos:
            continue
        per[i] = math.log(1 + sum(math.exp(-alpha * (s - base)) for s in kept_pos)) / alpha
        per[i] += math.log(1 + sum(math.exp(beta * (s - base)) for s in kept_neg)) / beta
    return per, per.sum() / len(y)


def margin_logits_np(x, w, y, kind, s=S, m=M):
    """AddMarginProduct / ArcMarginProduct logits, sample by sample; also whether each
    sample's target took ArcFace's fallback branch."""
    x, w = unit(np.asarray(x, np.float64)), unit(np.asarray(w, np.float64))
    out = np.zeros((len(y), len(w)))
    fallback = np.zeros(len(y), bool)
    for b in range(len(y)):
        for c in range(len(w)):
            cos = float(np.clip(x[b] @ w[c], -1.0, 1.0))
            if c != y[b]:
                out[b, c] = s * cos
            elif kind == "cosface":
                out[b, c] = s * (cos - m)
            elif cos > math.cos(math.pi - m):
                out[b, c] = s * math.cos(math.acos(cos) + m)
            else:
                fallback[b] = True
                out[b, c] = s * (cos - math.sin(math.pi - m) * m)
    return out, fallback


def ce_np(logits, y):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


def proxy_anchor_np(x, y, p, alpha=32.0, delta=0.1):
    x, p = unit(np.asarray(x, np.float64)), unit(np.asarray(p, np.float64))
    pos_sum, neg_sum, with_pos = 0.0, 0.0, 0
    for c in range(len(p)):
        cos_pos = [x[b] @ p[c] for b in range(len(y)) if y[b] == c]
        cos_neg = [x[b] @ p[c] for b in range(len(y)) if y[b] != c]
        if cos_pos:
            with_pos += 1
            pos_sum += math.log(1 + sum(math.exp(-alpha * (v - delta)) for v in cos_pos))
        neg_sum += math.log(1 + sum(math.exp(alpha * (v + delta)) for v in cos_neg))
    return pos_sum / with_pos + neg_sum / len(p)


def dgpcrl_np(logits, y, w, threshold=0.7, lam=0.1):
    """train_DGPCRL.py: NLL of -sign * log softmax, plus 0.1 MSE(W W^T, I); also the sign."""
    logits, w = np.asarray(logits, np.float64), np.asarray(w, np.float64)
    cls, signs = 0.0, []
    for b in range(len(y)):
        p = np.exp(logits[b] - logits[b].max())
        p_y = p[y[b]] / p.sum()
        signs.append(1.0 if p_y >= threshold else -1.0)
        cls += signs[-1] * math.log(p_y) / len(y)
    c = len(w)
    dec = sum((w[a] @ w[b] - (a == b)) ** 2 for a in range(c) for b in range(c)) / c**2
    return cls + lam * dec, cls, dec, np.array(signs)


# ---- tests: one jit compile per loss (every call below reuses the shapes) -------------------

_ms = jax.jit(jax.value_and_grad(ml.multi_similarity_loss))
_pa = jax.jit(jax.value_and_grad(ml.proxy_anchor_loss, argnums=(0, 2)))
_dg = jax.jit(jax.value_and_grad(ml.dgpcrl_loss, argnums=(0, 2), has_aux=True))


@functools.cache
def _margin_loss(kind: str):
    """jit(value_and_grad) of `cross_entropy(<kind>_logits(x, w, y))`, logits as aux."""
    fn = getattr(ml, f"{kind}_logits")

    def loss(x, w, y):
        logits = fn(x, w, y, scale=S, margin=M)
        return cross_entropy(logits, y), logits

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def test_multi_similarity_equals_research_ms_loss_and_pml():
    f = _fixture()

    # A 3 x 4 balanced batch: every anchor has both kept sets, so research-ms-loss and pml's
    # MultiSimilarityLoss + MultiSimilarityMiner(0.1) agree exactly (both sum / B).
    x, y = f["ms/emb"], f["ms/labels"]
    per, ref = ms_np(x, y)
    assert np.all(per > 0)
    loss, grad = _ms(x, y)
    _close(loss, ref)
    _close(loss, f["ms/loss"])
    _close(per, f["ms/per_anchor"])
    _close(grad, f["ms/grad_emb"])

    # Where they differ: anchors 0 and 1 are the same point. Their only positive is each
    # other, which research-ms-loss drops (S >= 1 - 1e-5) and so skips both anchors; pml
    # drops only the diagonal and mines the duplicate against anchor 2 (S > 0.9). The other
    # anchors agree, and the sum still divides by B = 12.
    x, y = f["msdup/emb"], f["msdup/labels"]
    per, ref = ms_np(x, y)
    pml = f["msdup/per_anchor"]
    assert np.all(per[:2] == 0) and np.all(pml[:2] > 0.1)
    _close(per[2:], pml[2:])
    loss, grad = _ms(x, y)
    _close(loss, ref)
    _close(loss, pml[2:].sum() / 12)
    assert np.all(np.isfinite(grad))
    # Near-duplicates: S = 1 - 4e-6 is dropped like the exact copy, S = 1 - 5e-5 is a
    # positive (anchors 0 and 1 count).
    for step, (low, high), counted in ((0.003, (1e-6, 1e-5), False), (0.02, (1e-5, 1e-3), True)):
        x = x.copy()
        x[1] = unit(x[0] + step * x[5])
        per, ref = ms_np(x, y)
        assert 1 - high < x[0] @ x[1] < 1 - low and np.all((per[:2] > 0.1) == counted)
        _close(_ms(x, y)[0], ref)

    # Anchors whose class has one sample (no positive: skipped). Clustered points (S about
    # 0.5), where the negatives' beta = 40 term is large enough to see the mining margin.
    rng = np.random.default_rng(0)
    x = unit(1.0 + rng.normal(size=(12, 8))).astype(np.float32)
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 4])
    per, ref = ms_np(x, y)
    assert per[10] == 0 and per[11] == 0 and np.count_nonzero(per) >= 6
    loss, grad = _ms(x, y)
    _close(loss, ref)
    assert np.all(np.isfinite(grad))
    # Other alpha / beta / base / margin reach the formula.
    kw = dict(alpha=3.0, beta=20.0, base=0.3, margin=0.3)
    _close(_ms(x, y, **kw)[0], ms_np(x, y, **kw)[1])

    # All labels equal: no negatives anywhere, every anchor skipped, loss and gradient 0.
    loss, grad = _ms(x, np.zeros(12, np.int32))
    assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0)


def test_cosface_arcface_logits_equal_arcface_pytorch_and_pml():
    f = _fixture()
    x, w, y = f["margin/emb"], f["margin/weights"], f["margin/labels"]
    for kind in ("cosface", "arcface"):
        ref, fallback = margin_logits_np(x, w, y, kind)
        # Sample 5 points away from its class: ArcFace's fallback branch.
        assert kind == "cosface" or fallback.tolist() == [False] * 5 + [True]
        (loss, logits), (g_x, g_w) = _margin_loss(kind)(x, w, y)
        _close(logits, ref)
        _close(loss, ce_np(ref, y))
        # pml's CosFaceLoss / ArcFaceLoss (W [D, C] = weights^T, ArcFace margin in degrees,
        # via acos then cos(theta + m)) give the same loss and gradients.
        _close(loss, f[f"{kind}/loss"])
        _close(g_x, f[f"{kind}/grad_emb"], 1e-4, 1e-4)
        _close(g_w, f[f"{kind}/grad_weights"], 1e-4, 1e-4)

    # cos = +1 and -1 exactly (sin = 0) on target and other classes: values as the formula,
    # gradients finite.
    w = np.eye(4, 8, dtype=np.float32)
    x = np.concatenate([w[:1], -w[1:2], w[2:3] + w[3:4], x[3:]])
    ref, fallback = margin_logits_np(x, w, y, "arcface")
    assert fallback.tolist() == [False, True, False, False, False, False]
    (_, logits), grads = _margin_loss("arcface")(x, w, y)
    _close(logits, ref)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_proxy_anchor_equals_paper_code_and_pml():
    f = _fixture()
    x, y, p = f["pa/emb"], f["pa/labels"], f["pa/proxies"]
    assert set(y.tolist()) == {0, 1, 3}  # proxies 2 and 4 have no positive
    loss, (g_x, g_p) = _pa(x, y, p)
    _close(loss, proxy_anchor_np(x, y, p))
    _close(loss, f["pa/loss"])
    _close(g_x, f["pa/grad_emb"], 1e-4, 1e-4)
    _close(g_p, f["pa/grad_proxies"], 1e-4, 1e-4)
    _close(_pa(x, y, p, alpha=16.0, delta=0.2)[0], proxy_anchor_np(x, y, p, 16.0, 0.2))


def test_dgpcrl_equals_train_script_and_its_gradient():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0])
    logits[[0, 3], y[[0, 3]]] += 4.0  # p_y >= 0.7 for samples 0 and 3
    # p_y = 0.72 and 0.68 exactly: either side of the threshold.
    for b, p_y in ((1, 0.72), (2, 0.68)):
        logits[b] = np.log((1 - p_y) / 4)
        logits[b, y[b]] = np.log(p_y)
    w = rng.normal(scale=0.3, size=(5, 7)).astype(np.float32)
    total, cls, dec, signs = dgpcrl_np(logits, y, w)
    assert signs.tolist() == [1, 1, -1, 1, -1, -1]

    (loss, parts), (g_logits, g_w) = _dg(logits, y, w)
    _close(loss, total)
    _close(parts["classification"], cls)
    _close(parts["decorrelation"], dec)
    # d/dz sigma log p_y = sigma (onehot - p) / B;
    # d/dW 0.1 mean((W W^T - I)^2) = 0.4 (W W^T - I) W / C^2.
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    _close(g_logits, signs[:, None] * (np.eye(5)[y] - p) / 6)
    _close(g_w, 0.4 * (w @ w.T - np.eye(5)) @ w / 25)
    (loss, _), _ = _dg(logits, y, w, threshold=0.5, decorrelation=1.0)
    _close(loss, dgpcrl_np(logits, y, w, threshold=0.5, lam=1.0)[0])


def test_losses_reject_bad_shapes():
    x, y = jnp.zeros((4, 3)), jnp.zeros(3, jnp.int32)
    with pytest.raises(ValueError, match="multi_similarity_loss: embeddings must be"):
        ml.multi_similarity_loss(x, y)
    with pytest.raises(ValueError, match="dgpcrl_loss: classifier must be"):
        ml.dgpcrl_loss(x, y[:1].repeat(4), jnp.zeros((4, 3)))
