"""Per-coordinate input maps: rank-Gaussianisation's properties, ties, and invariance of the estimate."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from ibjax import mi
from ibjax.mi import transform


def _fit_apply(x, kind, key=0):
    m = mi.fit_marginals(x, jnp.ones(x.shape[0], bool), kind)
    return mi.apply_marginals(m, x, kind, jax.random.uniform(jax.random.PRNGKey(key), x.shape))


def test_rank_gaussianization_gives_normal_marginals_and_keeps_order():
    x = jax.random.exponential(jax.random.PRNGKey(0), (4000, 3)) ** 3  # heavy-tailed, skewed
    z = np.asarray(_fit_apply(x, "rank"))
    assert stats.kstest(z[:, 0], "norm").pvalue > 0.01
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.05
    for j in range(3):  # strictly increasing in x (no ties in continuous data)
        order = np.argsort(np.asarray(x[:, j]))
        assert np.all(np.diff(z[order, j]) > 0)


def test_rank_gaussianization_of_new_values_interpolates_between_knots_and_clamps_beyond():
    knots = jnp.asarray([[0.0], [1.0], [2.0], [4.0]])
    m = mi.fit_marginals(knots, jnp.ones(4, bool), "rank")
    x = jnp.asarray([[-5.0], [0.0], [0.5], [3.0], [4.0], [9.0]])
    z = np.asarray(mi.apply_marginals(m, x, "rank", jnp.zeros_like(x)))[:, 0]
    ranks = np.array([0.0, 0.0, 0.5, 2.5, 3.0, 3.0])  # fractional ranks among the 4 knots
    np.testing.assert_allclose(z, stats.norm.ppf((ranks + 1) / 5), rtol=1e-5)
    # Padding rows (valid False) are not knots.
    m_pad = mi.fit_marginals(jnp.concatenate([knots, jnp.full((3, 1), -100.0)]), jnp.arange(7) < 4, "rank")
    np.testing.assert_allclose(mi.apply_marginals(m_pad, x, "rank", jnp.zeros_like(x))[:, 0], z, rtol=1e-6)


def test_ties_are_broken_at_random_uniformly_within_their_block():
    # uint8-like pixels: few distinct values, many ties. Each tied block maps onto its own interval of
    # normal scores, evenly filled by the tie-breaking draw, and blocks keep their order.
    pixels = jnp.asarray(np.random.default_rng(0).integers(0, 4, (6000, 1)), jnp.float32)
    z = np.asarray(_fit_apply(pixels, "rank"))[:, 0]
    assert len(np.unique(z)) > 5900  # continuous
    p = np.asarray(pixels)[:, 0]
    for v in range(3):
        assert z[p == v].max() < z[p == v + 1].min()
    u = stats.norm.cdf(z)
    for v in range(4):  # within a block, the probability transform is uniform over the block's share
        block = u[p == v]
        lo, hi = np.mean(p < v), np.mean(p <= v)
        assert stats.kstest((block - lo) / (hi - lo), "uniform").pvalue > 0.01
    # Deterministic given the key.
    np.testing.assert_array_equal(z, np.asarray(_fit_apply(pixels, "rank"))[:, 0])
    assert not np.array_equal(z, np.asarray(_fit_apply(pixels, "rank", key=1))[:, 0])


def test_standardize_centres_and_scales_and_leaves_constants_at_zero():
    x = jnp.concatenate([3 + 5 * jax.random.normal(jax.random.PRNGKey(1), (500, 2)), jnp.full((500, 1), 7.0)], 1)
    z = np.asarray(_fit_apply(x, "standardize"))
    np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(0), 1, atol=1e-4)
    np.testing.assert_allclose(z[:, 2], 0, atol=1e-5)


def test_standardize_floors_the_scale_of_a_nearly_constant_coordinate():
    # Column 2 is lit in one fitted row of 500: its plain std (0.045) would map an unseen 1.0 to 22
    # standard deviations. The floor is STD_FLOOR times the rms of the side's stds.
    x = jax.random.normal(jax.random.PRNGKey(2), (500, 3)).at[:, 2].set(0.0).at[0, 2].set(1.0)
    m = mi.fit_marginals(x, jnp.ones((500,), bool), "standardize")
    std = np.asarray(x).std(0)
    floor = transform.STD_FLOOR * np.sqrt(np.mean(std**2))
    np.testing.assert_allclose(np.asarray(m.scale), [std[0], std[1], floor], rtol=1e-4)
    z = np.asarray(mi.apply_marginals(m, jnp.asarray([[0.0, 0.0, 1.0]]), "standardize"))
    assert abs(z[0, 2]) < 1.0 / floor + 1e-3 < 5


def test_rank_preprocessed_estimate_is_invariant_to_monotone_marginal_maps():
    # MI is invariant under invertible per-coordinate maps, and so (up to interpolation between
    # knots on held-out rows) is the rank-preprocessed estimator: same samples, cubed or squashed.
    cfg = mi.resolve_config(epochs=6, batch_size=64, negatives=64, hidden=(16, 16), lr=3e-3, read_epochs=2,
                      heldout_fraction=0.25, validation_fraction=0.25, select="best", preprocess="rank")
    kx, kz = jax.random.split(jax.random.PRNGKey(2))
    x = jax.random.normal(kx, (1200, 2))
    y = 0.8 * x + 0.6 * jax.random.normal(kz, (1200, 2))
    res = mi.estimate_mi_groups(jax.random.split(jax.random.PRNGKey(3), 1).repeat(3, 0),
                                jnp.stack([x, x**3, jnp.arcsinh(5 * x)]),
                                jnp.stack([y, jax.scipy.stats.norm.cdf(y), y**3]), config=cfg)
    np.testing.assert_allclose(res.trajectory[1:], np.broadcast_to(res.trajectory[0], (2, 6)), atol=1e-4)
    np.testing.assert_allclose(res.heldout[1:], [res.heldout[0]] * 2, atol=0.01)
