"""Ground-truth tasks for MI estimators: paired samples whose mutual information is known exactly (nats).

Every sampler is a pure function of a PRNG key and static parameters returning ``(x f32[n, dx],
y f32[n, dy])``; every task's true MI is a closed form computed on the host in float64. The tasks
follow the families of Czyz et al. (2023), "Beyond Normal: On the Evaluation of Mutual Information
Estimators" (the ``bmi`` benchmark):

- :func:`gaussian`: X ~ N(0, I), Y = X A^T + E, E ~ N(0, I), each Y coordinate rescaled to unit
  variance, I(X;Y) = 1/2 log det(I + A A^T). ``structure="dense"``: every coordinate of X reaches
  every coordinate of Y (A a fixed random matrix, scaled to the requested MI); ``"sparse"``: only
  the first coordinate pair is dependent.
- :func:`student_t`: (X, Y) = (X_g, Y_g) / sqrt(V / nu) with (X_g, Y_g) a Gaussian task and V ~ chi2(nu)
  shared: a multivariate Student-t with heavy tails. Even with A = 0 X and Y are dependent through V.
  I = I_gauss + f(nu) + f(nu + dx + dy) - f(nu + dx) - f(nu + dy), f(z) = log Gamma(z/2) - (z/2) psi(z/2).
- :func:`transformed`: a Gaussian task with invertible maps applied to every coordinate (``"cube"``
  x^3, ``"asinh"``, ``"normal_cdf"`` Phi(x), which squashes onto (0, 1)): same MI.
- :func:`spiral`: a Gaussian task with X passed through the spiral diffeomorphism (the first two
  coordinates rotated by an angle proportional to |x|^2; the norm is kept, so it inverts): same MI.
- :func:`embedded`: low-dimensional dependence in high-dimensional inputs: a Gaussian task on
  ``latent`` coordinates, padded with independent N(0, 1) coordinates to dx and dy and mixed by fixed
  random rotations (every input coordinate carries a little of the signal): same MI.

:data:`SUITE` names a fixed set of tasks (true MI 0 to 2.5 nats); :func:`sample_tasks` stacks tasks of
equal dimensions along a leading group axis, the shape :func:`ibjax.mi.estimate_mi_groups` takes.
:func:`gaussian_fit_read` is a parametric yardstick: what a critic that knew the data were Gaussian
would read from the same number of samples.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import rng
from ibjax.mi import bounds
from ibjax.mi import gaussian as gaussian_critic  # the module; `gaussian` here is a task family

__all__ = [
    "Task",
    "SUITE",
    "cross_matrix",
    "gaussian_mi",
    "student_t_mi",
    "gaussian",
    "student_t",
    "transformed",
    "spiral",
    "spiral_map",
    "embedded",
    "marginal_map",
    "sample_tasks",
    "gaussian_fit_read",
]

MARGINAL_MAPS = ("identity", "cube", "asinh", "normal_cdf")


def cross_matrix(dx: int, dy: int, mi: float, structure: str = "dense", seed: int = 0) -> np.ndarray:
    """The float64 matrix A[dy, dx] with 1/2 log det(I + A A^T) = mi (nats), fixed by ``seed``.

    ``"dense"``: a standard normal matrix scaled by the factor that gives ``mi`` (found by bisection;
    the MI grows monotonically with the scale). ``"sparse"``: only A[0, 0] is non-zero.
    """
    if mi < 0:
        raise ValueError(f"mi must be >= 0 nats, got {mi}")
    if structure == "sparse":
        a = np.zeros((dy, dx))
        a[0, 0] = math.sqrt(math.expm1(2.0 * mi))
        return a
    if structure != "dense":
        raise ValueError(f"structure must be 'dense' or 'sparse', got {structure!r}")
    w = np.random.default_rng(seed).standard_normal((dy, dx))
    if mi == 0:
        return np.zeros((dy, dx))
    lo, hi = 0.0, 1.0
    while gaussian_mi(hi * w) < mi:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gaussian_mi(mid * w) < mi else (lo, mid)
    return 0.5 * (lo + hi) * w


def gaussian_mi(a: np.ndarray) -> float:
    """I(X;Y) in nats for X ~ N(0, I), Y = X A^T + E, E ~ N(0, I): 1/2 log det(I + A A^T)."""
    a = np.asarray(a, np.float64)
    return 0.5 * float(np.linalg.slogdet(np.eye(a.shape[0]) + a @ a.T)[1])


def _f(z: float) -> float:
    from scipy.special import digamma, gammaln  # here: importing SciPy at the top would slow every command

    return float(gammaln(z / 2.0) - z / 2.0 * digamma(z / 2.0))


def student_t_mi(gaussian_part: float, dof: float, dx: int, dy: int) -> float:
    """I(X;Y) in nats of a multivariate Student-t whose dispersion matrix has Gaussian MI ``gaussian_part``."""
    return gaussian_part + _f(dof) + _f(dof + dx + dy) - _f(dof + dx) - _f(dof + dy)


def _gaussian_pair(key: jax.Array, n: int, a: np.ndarray) -> tuple[jax.Array, jax.Array]:
    dy, dx = a.shape
    kx, ke = jax.random.split(key)
    x = rng.normal(kx, (n, dx))
    scale = np.sqrt(1.0 + np.sum(a**2, axis=1))  # Var(Y_j) = 1 + |A_j|^2: rescale to unit variance
    y = (x @ jnp.asarray(a.T, jnp.float32) + rng.normal(ke, (n, dy))) / jnp.asarray(scale, jnp.float32)
    return x, y


def gaussian(key: jax.Array, n: int, *, dx: int, dy: int, mi: float, structure: str = "dense", seed: int = 0):
    """Correlated Gaussian pairs with I(X;Y) = ``mi`` nats: ``(x f32[n, dx], y f32[n, dy])`` (unit variances)."""
    return _gaussian_pair(key, n, cross_matrix(dx, dy, mi, structure, seed))


def student_t(key: jax.Array, n: int, *, dx: int, dy: int, mi_gaussian: float, dof: float, structure: str = "dense",
              seed: int = 0):
    """Multivariate Student-t pairs (``dof`` degrees of freedom) whose dispersion is the Gaussian task of
    MI ``mi_gaussian``; the true MI is :func:`student_t_mi` (larger: the shared scale adds to it)."""
    kg, kv = jax.random.split(key)
    x, y = gaussian(kg, n, dx=dx, dy=dy, mi=mi_gaussian, structure=structure, seed=seed)
    v = jax.random.chisquare(kv, dof, (n, 1))
    s = jnp.sqrt(dof / v)
    return x * s, y * s


def marginal_map(x: jax.Array, kind: str) -> jax.Array:
    """An invertible map applied to every coordinate: ``"identity"``, ``"cube"``, ``"asinh"``, ``"normal_cdf"``."""
    if kind == "identity":
        return x
    if kind == "cube":
        return x**3
    if kind == "asinh":
        return jnp.arcsinh(x)
    if kind == "normal_cdf":
        return jax.scipy.stats.norm.cdf(x)
    raise ValueError(f"unknown marginal map {kind!r}; choose one of {MARGINAL_MAPS}")


def transformed(key: jax.Array, n: int, *, dx: int, dy: int, mi: float, fx: str, fy: str, structure: str = "dense",
                seed: int = 0):
    """A Gaussian task with invertible per-coordinate maps ``fx`` on X and ``fy`` on Y; MI = ``mi``."""
    x, y = gaussian(key, n, dx=dx, dy=dy, mi=mi, structure=structure, seed=seed)
    return marginal_map(x, fx), marginal_map(y, fy)


def spiral_map(x: jax.Array, speed: float) -> jax.Array:
    """The spiral diffeomorphism of R^d (d >= 2): rotate coordinates (0, 1) by ``speed * |x|^2`` radians.

    The rotation keeps |x|, so ``spiral_map(., -speed)`` inverts it.
    """
    theta = speed * jnp.sum(x**2, axis=-1)
    c, s = jnp.cos(theta), jnp.sin(theta)
    x0, x1 = x[..., 0], x[..., 1]
    return jnp.concatenate([(c * x0 - s * x1)[..., None], (s * x0 + c * x1)[..., None], x[..., 2:]], axis=-1)


def spiral(key: jax.Array, n: int, *, dx: int, dy: int, mi: float, speed: float = 0.5, structure: str = "dense",
           seed: int = 0):
    """A Gaussian task with X passed through :func:`spiral_map`; MI = ``mi``."""
    if dx < 2:
        raise ValueError(f"the spiral needs dx >= 2, got {dx}")
    x, y = gaussian(key, n, dx=dx, dy=dy, mi=mi, structure=structure, seed=seed)
    return spiral_map(x, speed), y


def embedded(key: jax.Array, n: int, *, dx: int, dy: int, latent: int, mi: float, seed: int = 0):
    """A ``latent``-dimensional Gaussian task of MI ``mi`` padded with independent coordinates to dx and
    dy and mixed by fixed random rotations (an invertible linear map of each side): MI = ``mi``."""
    if latent > min(dx, dy):
        raise ValueError(f"latent ({latent}) exceeds dx ({dx}) or dy ({dy})")
    kl, kx, ky = jax.random.split(key, 3)
    x, y = gaussian(kl, n, dx=latent, dy=latent, mi=mi, seed=seed)
    x = jnp.concatenate([x, rng.normal(kx, (n, dx - latent))], axis=1)
    y = jnp.concatenate([y, rng.normal(ky, (n, dy - latent))], axis=1)
    gen = np.random.default_rng(seed + 1)
    qx = np.linalg.qr(gen.standard_normal((dx, dx)))[0]
    qy = np.linalg.qr(gen.standard_normal((dy, dy)))[0]
    return x @ jnp.asarray(qx, jnp.float32), y @ jnp.asarray(qy, jnp.float32)


_SAMPLERS = {"gaussian": gaussian, "student_t": student_t, "transformed": transformed, "spiral": spiral,
             "embedded": embedded}


@dataclasses.dataclass(frozen=True)
class Task:
    """A named ground-truth task: ``sample(key, n) -> (x f32[n, dx], y f32[n, dy])`` and its true ``mi``.

    Attributes:
      name: label for tables.
      family: ``"gaussian"``, ``"student_t"``, ``"transformed"``, ``"spiral"`` or ``"embedded"``.
      dx, dy: dimensions.
      params: the sampler's other keyword arguments, as sorted (name, value) pairs (hashable).
    """

    name: str
    family: str
    dx: int
    dy: int
    params: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def make(name: str, family: str, dx: int, dy: int, **params) -> "Task":
        if family not in _SAMPLERS:
            raise ValueError(f"unknown family {family!r}; choose one of {sorted(_SAMPLERS)}")
        return Task(name, family, dx, dy, tuple(sorted(params.items())))

    @property
    def mi(self) -> float:
        """The true I(X;Y), nats."""
        p = dict(self.params)
        if self.family == "student_t":
            return student_t_mi(p["mi_gaussian"], p["dof"], self.dx, self.dy)
        return float(p["mi"])

    def sample(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        return _SAMPLERS[self.family](key, n, dx=self.dx, dy=self.dy, **dict(self.params))


SUITE: tuple[Task, ...] = (
    Task.make("independent", "gaussian", 3, 3, mi=0.0),
    Task.make("gaussian dense", "gaussian", 3, 3, mi=1.0),
    Task.make("gaussian dense, high", "gaussian", 3, 3, mi=2.5),
    Task.make("gaussian sparse", "gaussian", 3, 3, mi=0.5, structure="sparse"),
    Task.make("student-t (dof 5)", "student_t", 3, 3, mi_gaussian=1.0, dof=5.0),
    Task.make("cube", "transformed", 3, 3, mi=1.0, fx="cube", fy="cube"),
    Task.make("asinh", "transformed", 3, 3, mi=1.0, fx="asinh", fy="asinh"),
    Task.make("normal cdf", "transformed", 3, 3, mi=1.0, fx="normal_cdf", fy="normal_cdf"),
    Task.make("spiral", "spiral", 3, 3, mi=1.0),
    Task.make("embedded 2 in 32", "embedded", 32, 32, latent=2, mi=1.0),
    Task.make("embedded 2 in 32, high", "embedded", 32, 32, latent=2, mi=2.0),
    # Last, so the earlier tasks keep their ids (sample_tasks draws task i with fold_in(key, i)).
    Task.make("cube x asinh, 1.5", "transformed", 3, 3, mi=1.5, fx="cube", fy="asinh"),
)
"""The ground-truth suite of ``benchmarks/ground_truth.py``: true MI from 0 to 2.5 nats. The last task
mixes marginals (x^3 on X, asinh on Y) at 1.5 nats, where an estimator without a rank map read 17%
low."""


def sample_tasks(key: jax.Array, n: int, tasks: Sequence[Task], ids: Optional[Sequence[int]] = None
                 ) -> list[tuple[tuple[Task, ...], tuple[int, ...], jax.Array, jax.Array]]:
    """Samples of every task, stacked by dimensions: ``[(tasks, ids, x f32[G, n, dx], y f32[G, n, dy]), ...]``.

    Tasks with equal (dx, dy) share one entry (their group axis G), in first-appearance order. Task i
    is drawn with ``fold_in(key, ids[i])`` (default ids: 0, 1, ...), so its samples do not depend on
    which other tasks are drawn with it: pass a task's index in :data:`SUITE` as its id to draw a
    subset of the suite exactly as the whole suite draws it.
    """
    ids = tuple(range(len(tasks))) if ids is None else tuple(ids)
    if len(ids) != len(tasks):
        raise ValueError(f"{len(ids)} ids for {len(tasks)} tasks")
    by_dims: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tasks):
        by_dims.setdefault((t.dx, t.dy), []).append(i)
    out = []
    for idx in by_dims.values():
        pairs = [tasks[i].sample(jax.random.fold_in(key, ids[i]), n) for i in idx]
        out.append((tuple(tasks[i] for i in idx), tuple(ids[i] for i in idx), jnp.stack([p[0] for p in pairs]),
                    jnp.stack([p[1] for p in pairs])))
    return out


def gaussian_fit_read(x_fit, y_fit, x_read, y_read, rank: Optional[int] = None) -> float:
    """The all-pairs InfoNCE read (nats) of the Gaussian model fitted to ``(x_fit, y_fit)``, on
    ``(x_read f[n, dx], y_read f[n, dy])``.

    The critic is :mod:`ibjax.mi.gaussian`'s, fitted to the moments of the fit rows with no ridge: the
    model's log density ratio log p(y|x) / p(y) in canonical coordinates. ``rank``: keep the ``rank``
    strongest canonical pairs (a low-rank model); None keeps all min(dx, dy), the full Gaussian
    model. Every read row's negatives are the other read rows (as :func:`ibjax.mi.estimate_mi`'s
    held-out read), so the read is at most log(n).

    On Gaussian tasks this is what a critic of the right family reads from that many fitted samples:
    its shortfall below the truth is the sample's, not an optimiser's (in d x d dimensions a full
    model fits d^2 cross-covariances).
    """
    xf, yf, xr, yr = (jnp.asarray(v, jnp.float32) for v in (x_fit, y_fit, x_read, y_read))
    if xf.shape[0] != yf.shape[0] or xr.shape[0] != yr.shape[0]:
        raise ValueError("x and y need the same number of rows, in fit and in read")
    stats = gaussian_critic.zero_stats(xf.shape[1], yf.shape[1])
    stats = gaussian_critic.add_stats(stats, xf, yf, jnp.ones(xf.shape[0]))
    params = gaussian_critic.fit_gaussian_critic(stats, ridge=0.0)
    if rank is not None:
        params = gaussian_critic.keep_pairs(params, min(int(rank), params["rho"].shape[0]))
    return float(bounds.infonce_all_pairs(gaussian_critic.gaussian_critic_matrix(params, xr, yr)))
