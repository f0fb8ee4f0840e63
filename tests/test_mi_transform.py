"""Per-coordinate input maps: rank-Gaussianisation's properties, ties, and invariance of the estimate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


def test_order_preserving_sort_and_two_level_search_match_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    x[:40, 0] = 0.0
    x[40:60, 0] = -0.0  # equal to 0.0 under float comparison
    x[:, 1] = np.round(x[:, 1])  # ties
    x[-3:, 2] = np.inf  # padding rows
    np.testing.assert_array_equal(np.asarray(transform._sort_columns(jnp.asarray(x))), np.sort(x, axis=0))
    knots = np.sort(x, axis=0)
    queries = np.concatenate([x[:50], rng.normal(size=(50, 5)).astype(np.float32) * 3, knots[[0, -1]]])
    for q in (7, 64, 300):  # fewer knots than a segment, a square number, more than one segment row
        k = knots[np.linspace(0, 299, q).round().astype(int)]
        want = np.stack([np.searchsorted(k[:, c], queries[:, c], side="left") for c in range(5)], 1)
        np.testing.assert_array_equal(np.asarray(transform._first_not_below(jnp.asarray(k), jnp.asarray(queries))), want)


def test_fewer_knots_follow_the_every_value_map_closely_and_keep_ties_and_order():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_t(3, size=(2880, 4)).astype(np.float32) ** 3)  # heavy tails
    valid = jnp.ones(2880, bool)
    new = jnp.asarray(np.concatenate([np.asarray(x[:500]), rng.standard_t(3, size=(500, 4)).astype(np.float32) ** 3]))
    u = jax.random.uniform(jax.random.PRNGKey(0), new.shape)
    every = mi.fit_marginals(x, valid, "rank")
    few = mi.fit_marginals(x, valid, "rank", knots=256)
    assert every.knots.shape[0] == 2880 and few.knots.shape[0] == transform.knot_count(2880, 256) == 256
    z_every, z_few = (np.asarray(mi.apply_marginals(m, new, "rank", u)) for m in (every, few))
    assert np.abs(z_every - z_few).max() < 0.03  # 256 knots at equally spaced normal scores
    for j in range(4):  # still increasing in x on the fitted range (clamped beyond it)
        col = np.asarray(new[:, j])
        inside = (col >= np.asarray(x[:, j]).min()) & (col <= np.asarray(x[:, j]).max())
        order = np.argsort(col[inside])
        z = z_few[inside, j][order]
        assert np.all(np.diff(z) >= 0) and len(np.unique(z)) > 0.99 * len(z)  # float32 may merge neighbours
    # Pixels: each tied block keeps its own interval of normal scores with 16 knots for 4 values.
    pixels = jnp.asarray(rng.integers(0, 4, (6000, 1)), jnp.float32)
    m = mi.fit_marginals(pixels, jnp.ones(6000, bool), "rank", knots=16)
    p = np.asarray(pixels)[:, 0]
    cdf = stats.norm.cdf(np.asarray(mi.apply_marginals(m, pixels, "rank", jax.random.uniform(jax.random.PRNGKey(1), pixels.shape)))[:, 0])
    for v in range(4):
        lo, hi = np.mean(p < v), np.mean(p <= v)
        assert stats.kstest((cdf[p == v] - lo) / (hi - lo), "uniform").pvalue > 0.01
    with pytest.raises(ValueError, match="rank_knots must be 0"):
        mi.resolve_config(rank_knots=1)
