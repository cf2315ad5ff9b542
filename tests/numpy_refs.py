"""Plain-numpy references that several test files compare fgjax against, one copy each.

Test files import them by name (`from numpy_refs import unit, log_softmax`): tests/ is on
sys.path, as for conftest.py and toy_methods.py. tests/test_numpy_refs.py checks each
against scipy / scikit-learn.

Unless a docstring says otherwise a function computes in its input's dtype and array type
(a float32 array stays float32; a jax array divided by a numpy norm stays a jax array), as
the per-file copies they replace did.
"""

import numpy as np


def unit(x, axis=-1, eps=0.0):
    """x [..., D] -> [..., D]: each slice along `axis` divided by its L2 norm.

    eps=0 divides by the norm itself (a zero row becomes NaN); eps > 0 divides by
    max(norm, eps), as torch.nn.functional.normalize does with eps=1e-12 (a zero row stays
    zero)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / (np.maximum(norm, eps) if eps else norm)


def unit64(x, axis=-1):
    """x [..., D] (any array, any float dtype) -> float64 [..., D]: `unit` computed in
    float64."""
    return unit(np.asarray(x, np.float64), axis)


def log_softmax(x, axis=-1):
    """logits [..., N] -> log-probabilities [..., N] along `axis` (max-shifted, so large
    logits do not overflow)."""
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


def softmax(x, axis=-1):
    """logits [..., N] -> probabilities [..., N] along `axis` (max-shifted)."""
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def kl_rows(t_logits, q_logits):
    """Scalar: sum over rows of KL(softmax(t) || softmax(q)), both [..., N], the softmax
    along the last axis (a 1-D pair is one row)."""
    t, q = softmax(t_logits), softmax(q_logits)
    return np.sum(t * (np.log(t) - np.log(q)))
