"""The Gaussian critic (ibjax.mi.gaussian): closed-form fit, its scores, and the estimator's closed-form path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import mi
from ibjax.mi import gaussian
from ibjax.mi import groundtruth as gt


def _stats(x, y):
    return gaussian.add_stats(gaussian.zero_stats(x.shape[1], y.shape[1]), x, y, jnp.ones(x.shape[0]))


def test_fit_recovers_the_correlation_and_the_exact_log_ratio():
    # A bivariate Gaussian with correlation 0.6: the fitted critic is log p(b|a) - log p(b) in closed form.
    rho = 0.6
    key = jax.random.PRNGKey(0)
    z = jax.random.normal(key, (200_000, 2))
    a = z[:, :1]
    b = rho * a + np.sqrt(1 - rho**2) * z[:, 1:]
    params = gaussian.fit_gaussian_critic(_stats(a, b))
    assert float(params["rho"][0]) == pytest.approx(rho, abs=0.01)
    pa = jnp.array([[0.3], [-1.2], [2.0]])
    pb = jnp.array([[-0.5], [0.7], [1.5]])
    exact = (-0.5 * np.log(1 - rho**2) - (pb - rho * pa) ** 2 / (2 * (1 - rho**2)) + pb**2 / 2)[:, 0]
    np.testing.assert_allclose(gaussian.gaussian_critic(params, pa, pb), exact, atol=0.02)


@pytest.mark.parametrize("dx,dy", [(5, 3), (2, 6)])
def test_matrix_and_scores_agree_with_the_pairwise_critic(dx, dy):
    kx, ky = jax.random.split(jax.random.PRNGKey(2))
    x = jax.random.normal(kx, (400, dx))
    y = x[:, :1] @ jnp.ones((1, dy)) * 0.5 + jax.random.normal(ky, (400, dy))
    params = gaussian.fit_gaussian_critic(_stats(x, y))
    assert params["proj_a"].shape == (dx, min(dx, dy)) and params["proj_b"].shape == (dy, min(dx, dy))
    a, b = x[:7], y[:7]
    s = gaussian.gaussian_critic_matrix(params, a, b)
    pairwise = gaussian.gaussian_critic(params, a[:, None, :], b[None, :, :])
    np.testing.assert_allclose(s, pairwise, rtol=1e-4, atol=1e-4)
    neg = jnp.array([[1, 2], [0, 3], [4, 5], [6, 0], [1, 1], [2, 3], [0, 4]])
    pos, negs = gaussian.gaussian_critic_scores(params, a, b, neg)
    np.testing.assert_allclose(pos, jnp.diagonal(pairwise), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(negs, jnp.take_along_axis(pairwise, neg, axis=1), rtol=1e-4, atol=1e-4)


def _wide_pairs(n, da, db, seed=0):
    # Five shared latent directions in wide inputs, a fifth of the rows weighted out, 16 padding rows.
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 5))
    a = z @ rng.normal(size=(5, da)) + rng.normal(size=(n, da))
    b = 0.5 * z @ rng.normal(size=(5, db)) + rng.normal(size=(n, db))
    w = (rng.random(n) > 0.2).astype(np.float32)
    pad = lambda x: np.concatenate([x, np.zeros((16,) + x.shape[1:])]).astype(np.float32)  # noqa: E731
    return pad(a), pad(b), pad(w)


@pytest.mark.parametrize("n,da,db", [(100, 300, 40), (100, 40, 300), (60, 30, 20)])
def test_the_sample_space_fit_is_the_moments_fit(n, da, db):
    # Fewer rows than coordinates (and one case with more): kept rows solved through the n x n Gram
    # matrices give the critic of the moments, pair by pair (a ridge large enough that the canonical
    # correlations are distinct, so their order is defined), rows added batch by batch.
    a, b, w = _wide_pairs(n, da, db)
    moments = gaussian.fit_gaussian_critic(gaussian.add_stats(gaussian.zero_stats(da, db), a, b, w), ridge=0.3)
    rows = gaussian.GaussianRows(a=jnp.zeros(a.shape), b=jnp.zeros(b.shape), w=jnp.zeros(w.shape),
                                 filled=jnp.zeros((), jnp.int32))
    add = jax.jit(gaussian.add_stats)
    for i in range(0, a.shape[0], 29):
        rows = add(rows, a[i:i + 29], b[i:i + 29], w[i:i + 29])
    assert int(rows.filled) == a.shape[0]
    dual = gaussian.fit_gaussian_critic(rows, ridge=0.3)
    assert dual["proj_a"].shape == moments["proj_a"].shape and dual["proj_b"].shape == moments["proj_b"].shape
    np.testing.assert_allclose(dual["rho"], moments["rho"], atol=1e-4)
    assert float(moments["rho"][0]) > 0.5 and float(moments["rho"][0]) < gaussian.MAX_RHO
    for r in (1, 3, 10, min(da, db)):
        s1 = gaussian.gaussian_critic_matrix(gaussian.keep_pairs(moments, r), a[:20], b[:20])
        s2 = gaussian.gaussian_critic_matrix(gaussian.keep_pairs(dual, r), a[:20], b[:20])
        np.testing.assert_allclose(s2, s1, rtol=1e-3, atol=1e-3 * float(jnp.abs(s1).max()))


def test_the_accumulator_is_the_cheaper_exact_one():
    assert isinstance(gaussian.zero_stats(512, 3072), gaussian.GaussianStats)  # no capacity: the moments
    rows = gaussian.zero_stats(512, 3072, capacity=384)
    assert isinstance(rows, gaussian.GaussianRows) and rows.a.shape == (384, 512) and rows.b.shape == (384, 3072)
    assert isinstance(gaussian.zero_stats(512, 3072, capacity=3072), gaussian.GaussianStats)
    assert isinstance(gaussian.zero_stats(16, 16, capacity=4000), gaussian.GaussianStats)
    # Under vmap and jit, rows fitted per group as the moments are.
    a, b, w = _wide_pairs(40, 60, 8)
    fit = jax.jit(jax.vmap(lambda a, b, w: gaussian.fit_gaussian_critic(
        gaussian.add_stats(gaussian.zero_stats(60, 8, capacity=a.shape[0]), a, b, w), ridge=0.3)["rho"]))
    rho = np.asarray(fit(np.stack([a, a]), np.stack([b, 0 * b]), np.stack([w, w])))
    assert rho.shape == (2, 8) and rho[0, 0] > 0.5 and np.all(rho[1] < 1e-3)


def test_the_estimate_on_wide_inputs_does_not_depend_on_the_path(monkeypatch):
    # A closed-form estimate of few pairs of wide rows reads the same through the rows as through the
    # moments (each path forced; another length per call, so each is traced afresh).
    a, b, w = _wide_pairs(300, 60, 12, seed=1)  # 144 training pairs: fewer than 60 x 12 moments, more than 72
    keep = w > 0
    a, b = a[keep], b[keep]
    kw = dict(family="gaussian", candidates=(), batch_size=32, negatives=16, read_epochs=1)
    asked = []
    monkeypatch.setattr(gaussian, "rows_are_cheaper", lambda *s: asked.append(s) or True)
    rows = mi.estimate_mi(jax.random.PRNGKey(3), a, b, epochs=2, **kw)
    assert asked, "the estimator did not offer the fit its capacity"
    monkeypatch.setattr(gaussian, "rows_are_cheaper", lambda *_: False)
    moments = mi.estimate_mi(jax.random.PRNGKey(3), a, b, epochs=3, **kw)
    assert float(rows.validation[0]) > 0.3
    np.testing.assert_allclose(rows.heldout, moments.heldout, atol=0.02)
    np.testing.assert_allclose(rows.validation[0], moments.validation[0], atol=0.02)


def test_keep_pairs_and_the_ranks_compared():
    assert gaussian.pair_ranks(32, 32) == (1, 2, 4, 8, 16, 32)
    assert gaussian.pair_ranks(3, 5) == (1, 2, 3)
    x = jax.random.normal(jax.random.PRNGKey(3), (300, 4))
    params = gaussian.keep_pairs(gaussian.fit_gaussian_critic(_stats(x, x + 0.1)), 2)
    np.testing.assert_array_equal(params["keep"], [1, 1, 0, 0])
    # No pair kept: the critic is 0 everywhere (reads no information).
    none = gaussian.keep_pairs(params, 0)
    np.testing.assert_allclose(gaussian.gaussian_critic_matrix(none, x[:5], x[:5]), 0.0, atol=1e-6)


def test_fit_is_a_pure_function_under_vmap_and_jit():
    x = jax.random.normal(jax.random.PRNGKey(4), (3, 200, 2))
    y = x * jnp.array([0.0, 0.5, 2.0])[:, None, None] + jax.random.normal(jax.random.PRNGKey(5), (3, 200, 2))
    fit = jax.jit(jax.vmap(lambda a, b: gaussian.fit_gaussian_critic(_stats(a, b))["rho"]))
    rho = np.asarray(fit(x, y))
    assert rho.shape == (3, 2)
    assert rho[0, 0] < rho[1, 0] < rho[2, 0]  # stronger dependence, stronger first canonical pair


def test_estimator_reads_low_rank_dependence_in_wide_inputs():
    # 2-D dependence hidden in 32 x 32 dimensions: the rank chosen on validation is small, and the read is
    # near the truth where a full-rank model of 32 x 32 cross-covariances from these pairs reads short.
    task = gt.SUITE[9]
    x, y = task.sample(jax.random.PRNGKey(0), 4500)
    res = mi.estimate_mi(jax.random.PRNGKey(1), x, y, family="gaussian", epochs=5, batch_size=256, negatives=128)
    full = mi.estimate_mi(jax.random.PRNGKey(1), x, y, family="gaussian", rank=32, epochs=5, batch_size=256,
                          negatives=128)
    assert abs(float(res.heldout) - task.mi) < 0.15 * task.mi
    assert float(res.heldout) > float(full.heldout) + 0.05
    assert bool(res.converged) and res.trajectory.shape == (5,)
    np.testing.assert_allclose(res.validation, res.validation[0])  # one critic: every epoch the same read


def test_selection_keeps_the_gaussian_critic_where_it_reads_higher():
    x, y = gt.SUITE[9].sample(jax.random.PRNGKey(0), 1500)
    res = mi.estimate_mi(jax.random.PRNGKey(1), x, y, epochs=6, batch_size=128, negatives=64, hidden=(16, 16),
                         candidates="critic.family=gaussian")
    assert int(res.candidate) == 1


def test_closed_form_family_has_no_steps():
    with pytest.raises(ValueError, match="closed form"):
        mi.init(jax.random.PRNGKey(0), 2, 3, 3, family="gaussian")
