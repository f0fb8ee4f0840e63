"""ibjax.defenses.representation: Davies-Bouldin, DSWD, OT distance and the linear probe against
scikit-learn, scipy and known cases."""

import jax
import numpy as np
import pytest

from ibjax.defenses import davies_bouldin, dswd, linear_probe, ot_distance


def test_davies_bouldin_equals_scikit_learn_and_ignores_masked_rows():
    sk = pytest.importorskip("sklearn.metrics")
    r = np.random.default_rng(0)
    x = r.normal(size=(300, 5)) + np.repeat(np.eye(5)[:3] * 3, 100, axis=0)
    labels = np.repeat(np.arange(3), 100)
    assert float(davies_bouldin(x, labels, 3)) == pytest.approx(sk.davies_bouldin_score(x, labels), rel=1e-4)
    valid = r.random(300) < 0.6
    assert float(davies_bouldin(x, labels, 4, valid)) == pytest.approx(
        sk.davies_bouldin_score(x[valid], labels[valid]), rel=1e-4)


def test_ot_distance_of_a_cloud_to_itself_is_zero_and_matches_the_exact_assignment():
    opt = pytest.importorskip("scipy.optimize")
    from scipy.spatial.distance import cdist

    r = np.random.default_rng(1)
    a = r.normal(size=(30, 4)).astype(np.float32)
    assert float(ot_distance(a, a)) == pytest.approx(0.0, abs=1e-3)
    for shift in (0.3, 1.0):
        b = (r.normal(size=(30, 4)) + shift).astype(np.float32)
        cost = cdist(a, b, "sqeuclidean")
        i, j = opt.linear_sum_assignment(cost)
        exact = np.sqrt(cost[i, j].mean())
        assert float(ot_distance(a, b)) == pytest.approx(exact, rel=0.03)


def test_ot_distance_weights_out_invalid_rows():
    r = np.random.default_rng(2)
    a, b = r.normal(size=(40, 3)), r.normal(size=(50, 3)) + 2.0
    valid_b = np.arange(50) < 30
    assert float(ot_distance(a, b, y_valid=valid_b)) == pytest.approx(float(ot_distance(a, b[:30])), rel=1e-3)


def test_dswd_is_zero_without_a_trigger_and_the_mean_shift_for_a_translation():
    r = np.random.default_rng(3)
    x = r.normal(size=(200, 6)).astype(np.float32)
    w = r.normal(size=(6, 4)).astype(np.float32)
    assert float(dswd(x, x, w)) == pytest.approx(0.0, abs=1e-6)
    shift = r.normal(size=6).astype(np.float32)
    unit = w / np.linalg.norm(w, axis=0)
    # a translation moves each class's projection by shift . w_c: W2 of a shift is its size
    assert float(dswd(x, x + shift, w)) == pytest.approx(np.sqrt(np.mean((shift @ unit) ** 2)), rel=1e-4)


def test_linear_probe_reads_a_half_on_one_distribution_and_near_one_on_separable_groups():
    r = np.random.default_rng(4)
    reads = [float(linear_probe(jax.random.PRNGKey(s), r.normal(size=(800, 8)), r.random(800) < 0.2)) for s in range(3)]
    assert abs(np.mean(reads) - 0.5) < 0.06
    x = r.normal(size=(800, 8))
    pos = r.random(800) < 0.2
    x[pos, 0] += 4.0
    assert float(linear_probe(jax.random.PRNGKey(0), x, pos)) > 0.95
