"""Ground-truth tasks: their true MI re-derived from exact densities, the maps' invertibility, batching,
and a small estimator run on a few tasks."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ibjax.mi import groundtruth as gt
from ibjax import mi


def _joint_cov(task):
    """The Gaussian part's joint covariance of a gaussian/student_t task, from its cross matrix."""
    p = dict(task.params)
    a = gt.cross_matrix(task.dx, task.dy, p.get("mi", p.get("mi_gaussian")), p.get("structure", "dense"), p.get("seed", 0))
    s = np.sqrt(1 + (a**2).sum(1))
    cxy = a.T / s
    cyy = (np.eye(task.dy) + a @ a.T) / np.outer(s, s)
    return np.block([[np.eye(task.dx), cxy], [cxy.T, cyy]])


@pytest.mark.parametrize("name", ["gaussian dense", "gaussian sparse", "gaussian dense, high", "student-t (dof 5)"])
def test_true_mi_is_the_monte_carlo_mean_of_the_exact_log_density_ratio(name):
    task = next(t for t in gt.SUITE if t.name == name)
    n, dx = 40000, task.dx
    x, y = task.sample(jax.random.PRNGKey(1), n)
    z = np.concatenate([x, y], 1).astype(np.float64)
    sig = _joint_cov(task)
    if task.family == "student_t":
        dof = dict(task.params)["dof"]
        dist = lambda cov: stats.multivariate_t(np.zeros(len(cov)), cov, df=dof)  # noqa: E731
    else:
        dist = lambda cov: stats.multivariate_normal(np.zeros(len(cov)), cov)  # noqa: E731
    pmi = dist(sig).logpdf(z) - dist(sig[:dx, :dx]).logpdf(z[:, :dx]) - dist(sig[dx:, dx:]).logpdf(z[:, dx:])
    assert abs(pmi.mean() - task.mi) < 4 * pmi.std() / np.sqrt(n), (pmi.mean(), task.mi)


def test_cross_matrix_hits_the_requested_mi_and_sparse_means_one_pair():
    for mi_nats in (0.0, 0.3, 1.0, 2.5):
        for dx, dy in ((1, 1), (3, 5), (4, 2)):
            assert gt.gaussian_mi(gt.cross_matrix(dx, dy, mi_nats)) == pytest.approx(mi_nats, abs=1e-9)
    a = gt.cross_matrix(3, 3, 1.5, "sparse")
    assert np.count_nonzero(a) == 1 and gt.gaussian_mi(a) == pytest.approx(1.5)
    assert np.count_nonzero(gt.cross_matrix(3, 3, 1.5)) == 9
    with pytest.raises(ValueError, match="structure"):
        gt.cross_matrix(2, 2, 1.0, "banded")


def test_gaussian_plug_in_mi_of_the_samples_matches_the_truth():
    # Sample covariances of the Gaussian tasks (mixed by rotations into 32 dimensions too) give back
    # the MI: 1/2 log(det Sx det Sy / det S).
    for task in [t for t in gt.SUITE if t.family in ("gaussian", "embedded")]:
        x, y = task.sample(jax.random.PRNGKey(2), 30000)
        s = np.cov(np.concatenate([x, y], 1).T)
        dx = task.dx
        plug_in = 0.5 * (np.linalg.slogdet(s[:dx, :dx])[1] + np.linalg.slogdet(s[dx:, dx:])[1] - np.linalg.slogdet(s)[1])
        assert plug_in == pytest.approx(task.mi, abs=0.03 + task.dx * task.dy / 30000), task.name


def test_marginal_maps_and_the_spiral_are_invertible():
    x = jax.random.normal(jax.random.PRNGKey(3), (1000, 3))
    for kind in ("cube", "asinh", "normal_cdf"):
        fx = gt.marginal_map(x, kind)
        for j in range(3):
            order = np.argsort(np.asarray(x[:, j]))
            assert np.all(np.diff(np.asarray(fx)[order, j]) > 0), kind  # strictly increasing
    s = gt.spiral_map(x, 0.5)
    np.testing.assert_allclose(jnp.linalg.norm(s, axis=1), jnp.linalg.norm(x, axis=1), rtol=1e-5)
    np.testing.assert_allclose(gt.spiral_map(s, -0.5), x, atol=1e-4)
    assert float(jnp.max(jnp.abs(s - x))) > 1.0  # it does move points
    with pytest.raises(ValueError, match="marginal map"):
        gt.marginal_map(x, "square")


def test_transformed_tasks_keep_the_gaussian_samples_and_truth():
    base = next(t for t in gt.SUITE if t.name == "gaussian dense")
    cube = next(t for t in gt.SUITE if t.name == "cube")
    key = jax.random.PRNGKey(4)
    (x, y), (cx, cy) = base.sample(key, 500), cube.sample(key, 500)
    np.testing.assert_allclose(cx, x**3, rtol=1e-6)
    np.testing.assert_allclose(cy, y**3, rtol=1e-6)
    assert cube.mi == base.mi
    t = next(t for t in gt.SUITE if t.family == "student_t")
    tx, _ = t.sample(jax.random.PRNGKey(5), 20000)
    assert stats.kurtosis(np.asarray(tx[:, 0])) > 1.0  # heavy tails (dof 5: excess kurtosis 6)
    assert t.mi > dict(t.params)["mi_gaussian"]  # the shared scale adds information


def test_sample_tasks_stacks_tasks_of_equal_dimensions_and_draws_each_from_its_own_key():
    key = jax.random.PRNGKey(6)
    chunks = gt.sample_tasks(key, 100, gt.SUITE)
    assert [len(c[0]) for c in chunks] == [10, 2]  # the 3 x 3 tasks (the last one too), the 32 x 32 ones
    tasks, ids, x, y = chunks[1]
    assert ids == (9, 10) and x.shape == (2, 100, 32) and y.shape == (2, 100, 32)
    np.testing.assert_allclose(x[0], gt.SUITE[9].sample(jax.random.fold_in(key, 9), 100)[0])
    # A subset drawn with its suite indices as ids is drawn exactly as in the whole suite.
    (_, sub_ids, sub_x, _), = gt.sample_tasks(key, 100, gt.SUITE[9:11], ids=(9, 10))
    np.testing.assert_array_equal(sub_x, x)
    (_, _, other_x, _), = gt.sample_tasks(key, 100, gt.SUITE[9:11])  # ids 0, 1: other keys
    assert not np.allclose(other_x, x)


def test_a_few_tasks_estimated_in_one_call_read_their_truth_in_order():
    # Small and short: the independent task reads ~0, the Gaussian and its cube (same samples, same
    # estimator key) read alike under rank-Gaussianisation, and the reads rank the tasks by true MI.
    names = ("independent", "gaussian sparse", "gaussian dense", "cube")
    tasks = [next(t for t in gt.SUITE if t.name == name) for name in names]
    key = jax.random.PRNGKey(7)
    pairs = [t.sample(key, 1500) for t in tasks]  # one key: the cube is the Gaussian's samples cubed
    x, y = jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])
    cfg = mi.resolve_config(mi.XT_CONFIG, epochs=15, batch_size=128, negatives=128, hidden=(32, 32), lr=3e-3,
                              batch_fraction=1.0)
    res = mi.estimate_mi_groups(jnp.stack([jax.random.PRNGKey(8)] * 4), x, y, config=cfg)
    h = np.asarray(res.heldout)
    assert abs(h[0]) < 0.05
    assert abs(h[3] - h[2]) < 0.01
    assert h[0] < h[1] < h[2]
    assert all(abs(h[i] - t.mi) < 0.3 * t.mi for i, t in enumerate(tasks) if t.mi > 0), h


def _conditional_gaussian_read(xf, yf, xr, yr):
    """Re-derivation of the full Gaussian critic by regression: log p(y | x) - log p(y) with
    p(y | x) = N(M x, S), M = C_yx C_xx^-1, S = C_yy - M C_xy, then all-pairs InfoNCE."""
    from scipy.special import logsumexp

    dx = xf.shape[1]
    c = np.cov(np.concatenate([xf, yf], 1), rowvar=False)
    m = c[dx:, :dx] @ np.linalg.inv(c[:dx, :dx])
    s_inv, cy_inv = np.linalg.inv(c[dx:, dx:] - m @ c[:dx, dx:]), np.linalg.inv(c[dx:, dx:])
    xc, yc = xr - xf.mean(0), yr - yf.mean(0)
    d = yc[None, :, :] - (xc @ m.T)[:, None, :]
    s = -0.5 * np.einsum("ijk,kl,ijl->ij", d, s_inv, d) + 0.5 * np.einsum("jk,kl,jl->j", yc, cy_inv, yc)[None]
    return float(np.mean(np.diag(s) - logsumexp(s, axis=1)) + np.log(len(s)))


def test_gaussian_fit_read_is_the_fitted_gaussian_critic_and_reads_the_truth_from_a_large_sample():
    task = gt.Task.make("g", "gaussian", 4, 3, mi=1.0)
    x, y = (np.asarray(v, np.float64) for v in task.sample(jax.random.PRNGKey(0), 1500))
    full = gt.gaussian_fit_read(x[:1000], y[:1000], x[1000:], y[1000:])
    np.testing.assert_allclose(full, _conditional_gaussian_read(x[:1000], y[:1000], x[1000:], y[1000:]), atol=1e-4)  # float32 against float64
    assert gt.gaussian_fit_read(x[:1000], y[:1000], x[1000:], y[1000:], rank=3) == pytest.approx(full, abs=1e-6)
    x, y = (np.asarray(v, np.float64) for v in task.sample(jax.random.PRNGKey(1), 21000))
    assert gt.gaussian_fit_read(x[:20000], y[:20000], x[20000:], y[20000:]) == pytest.approx(1.0, abs=0.12)


def test_a_low_rank_gaussian_fit_reads_low_dimensional_dependence_closer_to_the_truth():
    task = gt.SUITE[9]  # 2-D dependence in 32 x 32 dimensions, MI 1 nat
    x, y = (np.asarray(v, np.float64) for v in task.sample(jax.random.PRNGKey(2), 3780))
    fit, read = slice(0, 2880), slice(2880, None)
    full = gt.gaussian_fit_read(x[fit], y[fit], x[read], y[read])
    low = gt.gaussian_fit_read(x[fit], y[fit], x[read], y[read], rank=2)
    assert full < low - 0.1 and abs(low - task.mi) < 0.15
