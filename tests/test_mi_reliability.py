"""Every estimate carries its reliability: the convergence verdict and the held-out standard error."""

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import mi
from ibjax.mi import groundtruth


def test_trend_recovers_a_line_and_its_noise():
    t = np.arange(40, dtype=np.float32)
    rng = np.random.default_rng(0)
    rise, se = mi.trend(jnp.asarray(np.stack([0.5 + 0.01 * t, 0.5 + 0.01 * t + 0.05 * rng.normal(size=40)])), 20)
    np.testing.assert_allclose(rise[0], 0.19, rtol=1e-4)  # 19 steps of 0.01
    assert float(se[0]) < 1e-5
    assert abs(float(rise[1]) - 0.19) < 4 * float(se[1]) and 0.01 < float(se[1]) < 0.1
    _, short_se = mi.trend(jnp.asarray(0.5 + 0.01 * t), 4)  # too few epochs to judge
    assert np.isinf(float(short_se))


def test_verdict_flags_a_significant_rise_and_with_last_critic_reads_also_a_fall():
    rise = jnp.asarray([0.3, 0.01, -0.3, 0.05, 0.05])
    se = jnp.asarray([0.02, 0.02, 0.02, 0.04, jnp.inf])
    np.testing.assert_array_equal(mi.convergence_verdict(rise, se, 0.02, two_sided=False), [False, True, True, True, False])
    np.testing.assert_array_equal(mi.convergence_verdict(rise, se, 0.02, two_sided=True), [False, True, False, True, False])


def test_mean_and_se_of_terms():
    terms = jnp.asarray([[1.0, 2.0, 3.0, 99.0], [5.0, 0.0, 0.0, 0.0]])
    w = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0]], jnp.float32)
    mean, se = mi.mean_and_se(terms, w)
    np.testing.assert_allclose(mean, [2.0, 5.0])
    np.testing.assert_allclose(se[0], 1.0 / np.sqrt(3), rtol=1e-6)
    assert np.isnan(float(se[1]))  # one row: no standard error


def test_standard_errors_cover_the_truth_and_an_undertrained_critic_is_flagged():
    # One batched call: 40 seeds of a Gaussian task with I = 0.2 nats (small enough that InfoNCE's own
    # bias at K = 64 is negligible next to the standard error), and one nearly deterministic pair
    # (b = a + 0.01 noise) whose critic is still climbing towards log(K + 1) after 30 epochs.
    seeds = 40
    pairs = [groundtruth.gaussian(jax.random.PRNGKey(100 + g), 1000, dx=1, dy=1, mi=0.2) for g in range(seeds)]
    xd = jax.random.normal(jax.random.PRNGKey(5), (1000, 1))
    yd = xd + 0.01 * jax.random.normal(jax.random.PRNGKey(6), (1000, 1))
    x, y = jnp.stack([p[0] for p in pairs] + [xd]), jnp.stack([p[1] for p in pairs] + [yd])
    cfg = mi.resolve_config(critic="concat", epochs=30, batch_size=64, negatives=64, hidden=(16, 16), lr=3e-3, heldout_fraction=0.3,
                      validation_fraction=0.2, select="best", preprocess="rank", read_epochs=2, batch_fraction=1.0,
                            candidates=())  # the verdict on a trained critic (the Gaussian one has no trend)
    res = mi.estimate_mi_groups(jax.random.PRNGKey(7), x, y, config=cfg)
    h, se = np.asarray(res.heldout[:seeds]), np.asarray(res.heldout_se[:seeds])
    covered = np.mean(np.abs(h - 0.2) <= 1.96 * se)
    assert 0.85 <= covered, covered  # 95% intervals; 40 seeds: 0.85 is 3 binomial sd below 0.95
    assert 0.7 < np.std(h) / np.mean(se) < 1.4  # the se is the spread of the read over seeds
    assert np.mean(np.asarray(res.converged[:seeds])) >= 0.9
    assert not bool(res.converged[seeds]) and float(res.trend[seeds]) > 2 * float(res.trend_se[seeds])
