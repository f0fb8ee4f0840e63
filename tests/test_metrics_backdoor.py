"""ibjax.mi.discrete and ibjax.metrics.backdoor: exact discrete information and the authors' bound checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax.metrics import backdoor
from ibjax.mi import discrete, resolve_config


def _h(p):
    return -sum(q * math.log(q) for q in p if q > 0)


def test_discrete_information_against_hand_values_and_sklearn():
    assert float(discrete.entropy(jnp.array([0.9, 0.1]))) == pytest.approx(0.3251, abs=1e-4)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, 500)
    b = (a + rng.integers(0, 2, 500)) % 4
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert float(discrete.discrete_mi(a, b, 3, 4)) == pytest.approx(sklearn_metrics.mutual_info_score(a, b), rel=1e-5)
    assert float(discrete.discrete_mi(a, a, 3, 3)) == pytest.approx(float(discrete.entropy(jnp.bincount(a))), rel=1e-5)
    assert float(discrete.conditional_entropy(a, a, 3, 3)) == pytest.approx(0.0, abs=1e-5)
    w = (np.arange(500) < 250).astype(np.float32)  # a mask counts only the first half
    assert float(discrete.discrete_mi(a, b, 3, 4, w)) == pytest.approx(
        float(discrete.discrete_mi(a[:250], b[:250], 3, 4)), rel=1e-5)
    batched = jax.vmap(discrete.mutual_information)(jnp.stack([discrete.joint_counts(a, b, 3, 4)] * 2))
    assert batched.shape == (2,)


def _poisoned_set(rng, per_class=200, classes=10, ratio=0.1, side=8):
    """Balanced classes, ``ratio`` of every class triggered (a 2x2 white patch) and relabelled to 0."""
    labels = np.repeat(np.arange(classes), per_class)
    poisoned = np.zeros(labels.size, bool)
    for c in range(classes):
        poisoned[np.flatnonzero(labels == c)[: int(ratio * per_class)]] = True
    x = rng.uniform(0.0, 0.6, (labels.size, side, side, 1)).astype(np.float32)
    x[poisoned, :2, :2, :] = 1.0
    return x, poisoned, np.where(poisoned, 0, labels)


def test_bound_checks_reach_the_authors_analytic_values_on_a_planted_trigger():
    rng = np.random.default_rng(1)
    x, poisoned, labels = _poisoned_set(rng)
    h_b = _h([0.1, 0.9])
    # I(B;Y) by hand: Y = 0 holds the 10% poisons and class 0's 9% clean samples; every other label is clean.
    p0 = 0.1 + 0.09
    i_b_y = h_b - p0 * _h([0.1 / p0, 0.09 / p0])
    assert i_b_y == pytest.approx(0.1936, abs=1e-4) and h_b == pytest.approx(0.3251, abs=1e-4)
    cfg = resolve_config(backdoor.BACKDOOR_CHECK_MI, epochs=25, batch_size=64, negatives=64, hidden=(32, 32),
                         lr=3e-3)
    out = backdoor.backdoor_bounds(jax.random.PRNGKey(0), x, poisoned, labels, labels, 10, cfg)
    assert out["H_B"] == pytest.approx(h_b, abs=1e-5) and out["I_B_Y"] == pytest.approx(i_b_y, abs=1e-5)
    assert out["I_B_Ypred"] == pytest.approx(i_b_y, abs=1e-5)  # a network that predicts the training labels
    assert out["I_X_B_read"] == "heldout" and out["I_X_B"] <= h_b + 3 * out["I_X_B_se"] + 0.02
    assert out["I_X_B"] == pytest.approx(h_b, abs=0.06)  # B is a function of X: the estimate reaches H(B)
    blind = backdoor.backdoor_bounds(jax.random.PRNGKey(0), x, poisoned, labels, np.zeros_like(labels), 10,
                                     estimate_xb=False)
    assert blind["I_B_Ypred"] == pytest.approx(0.0, abs=1e-6) and blind["I_X_B"] is None
