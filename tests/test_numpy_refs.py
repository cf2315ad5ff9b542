"""tests/numpy_refs.py (the shared numpy references) against scipy and scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from numpy_refs import kl_rows, log_softmax, softmax, unit, unit64
from sklearn.preprocessing import normalize


def _rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_matches_sklearn_normalize_and_keeps_the_dtype(dtype):
    x = (_rng().normal(size=(7, 5)) * 3).astype(dtype)
    got = unit(x)
    assert got.dtype == dtype
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, normalize(x, axis=1), rtol=rtol)
    np.testing.assert_allclose(unit(x, axis=0), normalize(x, axis=0), rtol=rtol)
    np.testing.assert_allclose(unit(x, axis=1), got, rtol=0)


def test_unit_on_the_last_axis_of_a_3d_array():
    x = _rng().normal(size=(2, 3, 4))
    want = normalize(x.reshape(6, 4)).reshape(2, 3, 4)
    np.testing.assert_allclose(unit(x), want, rtol=1e-12)


def test_unit_eps_keeps_zero_rows_zero_and_without_eps_they_are_nan():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_array_equal(unit(x, eps=1e-12), normalize(x))  # sklearn: zero stays zero
    with np.errstate(invalid="ignore"):
        assert np.isnan(unit(x)[1]).all()
    tiny = np.array([[1e-14, 0.0]])
    np.testing.assert_allclose(unit(tiny, eps=1e-12), tiny / 1e-12)  # torch's F.normalize


def test_unit64_is_float64_from_float32_and_jax_inputs():
    x = _rng().normal(size=(4, 3)).astype(np.float32)
    for arg in (x, jnp.asarray(x)):
        got = unit64(arg)
        assert type(got) is np.ndarray and got.dtype == np.float64
        np.testing.assert_allclose(got, normalize(x.astype(np.float64)), rtol=1e-12)


def test_unit_keeps_a_jax_array_a_jax_array():
    # The per-file copies divided x itself, so a jax input gave a jax output; call sites
    # that pass network outputs straight in keep that.
    x = jnp.asarray(_rng().normal(size=(4, 3)), jnp.float32)
    assert isinstance(unit(x), jax.Array)
    np.testing.assert_allclose(np.asarray(unit(x)), normalize(np.asarray(x)), rtol=1e-6)


@pytest.mark.parametrize("axis", [-1, 0])
def test_log_softmax_and_softmax_match_scipy(axis):
    x = _rng().normal(size=(6, 9)) * 4
    np.testing.assert_allclose(
        log_softmax(x, axis), scipy.special.log_softmax(x, axis=axis), rtol=1e-12
    )
    np.testing.assert_allclose(softmax(x, axis), scipy.special.softmax(x, axis=axis), rtol=1e-12)
    np.testing.assert_allclose(softmax(x, axis).sum(axis), 1.0, rtol=1e-12)


def test_log_softmax_and_softmax_do_not_overflow_and_keep_float32():
    x = np.array([[1000.0, 999.0, -1000.0], [0.0, 0.0, 0.0]], np.float32)
    assert log_softmax(x).dtype == np.float32 and softmax(x).dtype == np.float32
    np.testing.assert_allclose(log_softmax(x), scipy.special.log_softmax(x, axis=-1), rtol=1e-6)
    np.testing.assert_allclose(softmax(x), scipy.special.softmax(x, axis=-1), rtol=1e-6)
    x3 = _rng().normal(size=(2, 3, 5))
    np.testing.assert_allclose(log_softmax(x3), scipy.special.log_softmax(x3, axis=-1))


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 3, 7)])
def test_kl_rows_is_the_sum_of_scipy_row_entropies(shape):
    rng = _rng()
    t, q = rng.normal(size=shape) * 2, rng.normal(size=shape) * 2
    p_t, p_q = (scipy.special.softmax(a, axis=-1).reshape(-1, 7) for a in (t, q))
    want = sum(scipy.stats.entropy(a, b) for a, b in zip(p_t, p_q, strict=True))
    np.testing.assert_allclose(kl_rows(t, q), want, rtol=1e-10)
    assert kl_rows(t, t) == pytest.approx(0.0, abs=1e-12)
