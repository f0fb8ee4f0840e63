"""The Gaussian critic: the log density ratio of a Gaussian model fitted in closed form, no training.

After the rank map (``MIConfig.critic.preprocess="rank"``) every coordinate of a and b is standard
normal, so a Gaussian model of the pair is a model of their copula: the Gaussian-copula MI estimator
(Ince et al. 2017, "A statistical framework for neuroimaging data analysis based on mutual
information estimated via a Gaussian copula"), here read as a critic like any other. Fitted to a
group's training pairs by their moments, its critic is the model's log p(b | a) / p(b) in canonical
coordinates (canonical correlation analysis of the fitted covariances): with u = (a - mu_a) P_a and
v = (b - mu_b) P_b the canonical variates (unit variance, pair k correlated rho_k),

    f(a, b) = sum_k  -1/2 log(1 - rho_k^2) + rho_k u_k v_k / (1 - rho_k^2) - rho_k^2 (u_k^2 + v_k^2) / (2 (1 - rho_k^2)),

the exact log ratio where the copula is Gaussian (every invertible marginal map of a Gaussian task),
and a valid critic of every variational bound anywhere else: its InfoNCE read is a lower bound
whatever the data. Keeping only the r strongest canonical pairs is a rank-r model, the low-rank
prior that dependence confined to a few directions of wide inputs needs (the 2-in-32 tasks of
:data:`ibjax.mi.groundtruth.SUITE`: a full-rank model of 32 x 32 cross-covariances fitted to 2,880
pairs reads a quarter short; the true rank reads near the truth). The estimator fits it from one pass
over the training split and picks r on the validation split (``critic.rank = 0``) or keeps
``critic.rank`` pairs; as a candidate of model selection (``MIConfig.candidates``) it costs one pass
over the training split and a few validation reads instead of a critic's epochs.

Two exact solutions of the same fit, chosen by shape. With at least as many training pairs as
coordinates the moments (:class:`GaussianStats`: d x d sums) are accumulated and the covariances
solved, O(n d^2 + d^3). With fewer (wide inputs, small groups: 3,072 pixels against a few hundred
pairs) the pairs themselves are kept (:class:`GaussianRows`) and the fit is solved in sample space
through the n x n Gram matrices (the push-through identity (A'A + l I)^-1 A' = A' (AA' + l I)^-1 with
the same ridge), O(n^2 d + n^3): the same critic without ever forming a d x d matrix.

Pure functions of arrays (jit, vmap): :func:`zero_stats` / :func:`add_stats` accumulate weighted
moments or rows, :func:`fit_gaussian_critic` solves them, :func:`keep_pairs` keeps the r strongest pairs,
:func:`gaussian_critic_scores` / :func:`gaussian_critic_matrix` read the critic.
"""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp
from flax import struct

__all__ = [
    "GaussianStats",
    "GaussianRows",
    "zero_stats",
    "add_stats",
    "fit_gaussian_critic",
    "init_gaussian_critic",
    "keep_pairs",
    "pair_ranks",
    "gaussian_critic",
    "gaussian_critic_scores",
    "gaussian_critic_matrix",
    "RIDGE",
    "MAX_RHO",
]

RIDGE = 1e-3
"""Ridge added to each covariance's diagonal, relative to its mean variance: keeps the whitening finite
where a side has more coordinates than pairs or constant coordinates (pixels at a border)."""

MAX_RHO = 0.999
"""Largest canonical correlation kept (log(1 - rho^2) stays finite: at most 3.1 nats per pair)."""


@struct.dataclass
class GaussianStats:
    """Weighted moments of paired rows: ``n`` f32[], sums ``sa`` f32[da], ``sb`` f32[db] and products
    ``saa`` f32[da, da], ``sbb`` f32[db, db], ``sab`` f32[da, db]."""

    n: jax.Array
    sa: jax.Array
    sb: jax.Array
    saa: jax.Array
    sbb: jax.Array
    sab: jax.Array


@struct.dataclass
class GaussianRows:
    """The weighted rows themselves, for the sample-space fit: ``a`` f32[N, da], ``b`` f32[N, db],
    ``w`` f32[N] (0: an empty or left-out slot) and ``filled`` int32[] (slots written so far)."""

    a: jax.Array
    b: jax.Array
    w: jax.Array
    filled: jax.Array


def rows_are_cheaper(da: int, db: int, capacity: int) -> bool:
    """Whether keeping ``capacity`` rows and solving in sample space is cheaper than the moments.

    Costs in matmul multiply-adds: the moments pay n (da + db)^2 to accumulate and the factorisations of
    the covariances (d^3 / 3 + 2 d^2 d' + 9 d'^3, d the wider side, d' the narrower) at 3x a matmul's
    cost per operation; the rows pay 2 n^2 (da + db) for the Gram matrices and their projections and
    60 n^3 for two n x n eigensolves and an SVD. The weights are fitted to timings of both paths on a
    2-core CPU (da, db = 512, 3,072: the rows 6x cheaper at n = 384, 1.4x at n = 768, 16x dearer at
    n = 3,072); either path is exact, so a wrong call costs time only.
    """
    n, wide, narrow = capacity, max(da, db), min(da, db)
    moments = n * (da + db) ** 2 + 3 * (wide**3 / 3 + 2 * wide**2 * narrow + 9 * narrow**3)
    rows = 2 * n**2 * (da + db) + 2 * n * (da + db) * narrow + 60 * n**3
    return rows < moments


def zero_stats(da: int, db: int, capacity: Optional[int] = None) -> Union[GaussianStats, GaussianRows]:
    """Empty accumulators for pairs of da- and db-wide rows: the moments, or, where at most ``capacity``
    rows will be added and :func:`rows_are_cheaper` says so, room for the rows (``capacity`` None: the
    moments)."""
    z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731
    if capacity is not None and rows_are_cheaper(da, db, capacity):
        return GaussianRows(a=z(capacity, da), b=z(capacity, db), w=z(capacity), filled=jnp.zeros((), jnp.int32))
    return GaussianStats(n=z(), sa=z(da), sb=z(db), saa=z(da, da), sbb=z(db, db), sab=z(da, db))


def add_stats(stats, a: jax.Array, b: jax.Array, weight: jax.Array):
    """``stats`` plus the rows a f[B, da], b f[B, db] weighted by weight f[B] (0 leaves a row out). A
    :class:`GaussianRows` must have room for every row it is given (the estimator sizes it so): past its
    capacity the write's start is clamped and the last slots are overwritten."""
    a, b, w = a.astype(jnp.float32), b.astype(jnp.float32), weight.astype(jnp.float32)
    if isinstance(stats, GaussianRows):
        at = stats.filled
        put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x, (at,) + (0,) * (x.ndim - 1))  # noqa: E731
        return GaussianRows(a=put(stats.a, a), b=put(stats.b, b), w=put(stats.w, w), filled=at + a.shape[0])
    aw, bw = a * w[:, None], b * w[:, None]
    return GaussianStats(n=stats.n + jnp.sum(w), sa=stats.sa + jnp.sum(aw, 0), sb=stats.sb + jnp.sum(bw, 0),
                         saa=stats.saa + aw.T @ a, sbb=stats.sbb + bw.T @ b, sab=stats.sab + aw.T @ b)


def _inv_sqrt(c: jax.Array) -> jax.Array:
    lam, vec = jnp.linalg.eigh(c)
    return (vec / jnp.sqrt(jnp.maximum(lam, 1e-12))) @ vec.T


def _ridged(c: jax.Array, ridge: float) -> jax.Array:
    d = c.shape[0]
    return c + ridge * (jnp.trace(c) / d + 1e-12) * jnp.eye(d, dtype=c.dtype)


def _cca_wide_a(c_aa, c_bb, c_ab):
    """Canonical directions when da >= db: ``(P_a f32[da, db], P_b f32[db, db], rho f32[db])``, rho
    descending. Solves through C_aa once (Cholesky, da^3 / 3) rather than whitening the wide side."""
    w_b = _inv_sqrt(c_bb)
    m = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(c_aa), c_ab)  # C_aa^-1 C_ab [da, db]
    k = w_b @ (c_ab.T @ m) @ w_b
    lam, vec = jnp.linalg.eigh(0.5 * (k + k.T))  # ascending rho^2
    lam, vec = lam[::-1], vec[:, ::-1]
    rho = jnp.sqrt(jnp.clip(lam, 0.0, 1.0))
    p_b = w_b @ vec
    p_a = (m @ p_b) / jnp.maximum(rho, 1e-6)[None, :]  # unit variance: p_b' C_ba C_aa^-1 C_ab p_b = rho^2
    return p_a, p_b, rho


def fit_gaussian_critic(stats: Union[GaussianStats, GaussianRows], ridge: float = RIDGE) -> dict:
    """The Gaussian critic of the moments or rows ``stats`` with all m = min(da, db) canonical pairs.

    Returns params ``{"mu_a" f32[da], "mu_b" f32[db], "proj_a" f32[da, m], "proj_b" f32[db, m],
    "rho" f32[m] (descending, at most MAX_RHO), "keep" f32[m] (1: the pair is read)}``.
    """
    if isinstance(stats, GaussianRows):
        return _fit_rows(stats, ridge)
    n = jnp.maximum(stats.n, 2.0)
    mu_a, mu_b = stats.sa / n, stats.sb / n
    cov = lambda s, x, y: (s - n * jnp.outer(x, y)) / (n - 1.0)  # noqa: E731
    c_aa = _ridged(cov(stats.saa, mu_a, mu_a), ridge)
    c_bb = _ridged(cov(stats.sbb, mu_b, mu_b), ridge)
    c_ab = cov(stats.sab, mu_a, mu_b)
    if c_aa.shape[0] >= c_bb.shape[0]:
        p_a, p_b, rho = _cca_wide_a(c_aa, c_bb, c_ab)
    else:
        p_b, p_a, rho = _cca_wide_a(c_bb, c_aa, c_ab.T)
    rho = jnp.minimum(rho, MAX_RHO)
    return {"mu_a": mu_a, "mu_b": mu_b, "proj_a": p_a, "proj_b": p_b, "rho": rho, "keep": jnp.ones_like(rho)}


def _gram_factors(x: jax.Array, ridge: float):
    """For centred, weighted rows x f32[N, d]: eigenvectors U f32[N, N] of the Gram matrix x x' and
    (e / (e + l))^(1/2), 1 / (e + l) of its eigenvalues e, l the ridge as :func:`_ridged` scales it."""
    e, u = jnp.linalg.eigh(x @ x.T)
    e = jnp.maximum(e, 0.0)
    lam = ridge * (jnp.sum(e) / x.shape[1] + 1e-12)
    den = jnp.maximum(e + lam, 1e-30)
    return u, jnp.sqrt(e / den), 1.0 / den


def _fit_rows(rows: GaussianRows, ridge: float) -> dict:
    """:func:`fit_gaussian_critic` in sample space. With A, B the centred rows scaled by
    sqrt(w / (n - 1)) (so C_aa = A'A + l_a I, C_ab = A'B) and A A' = U_a E_a U_a', the whitened
    cross-covariance is V_a Q V_b' with Q = D_a U_a' U_b D_b, D = (E / (E + l))^(1/2): its singular
    values are the canonical correlations, and the directions follow from the push-through identity,
    P_a = C_aa^-1 C_ab P_b / rho = A' (A A' + l_a)^-1 B P_b / rho with B P_b = U_b D_b R."""
    w = rows.w
    n = jnp.maximum(jnp.sum(w), 2.0)
    mu_a, mu_b = w @ rows.a / n, w @ rows.b / n
    scale = jnp.sqrt(w / (n - 1.0))[:, None]
    xa, xb = (rows.a - mu_a) * scale, (rows.b - mu_b) * scale
    u_a, d_a, inv_a = _gram_factors(xa, ridge)
    u_b, d_b, inv_b = _gram_factors(xb, ridge)
    left, rho, right_t = jnp.linalg.svd((d_a[:, None] * (u_a.T @ u_b)) * d_b[None, :])  # rho descending
    m = min(xa.shape[1], xb.shape[1])
    k = min(m, rho.shape[0])
    left, rho, right = left[:, :k], rho[:k], right_t[:k].T
    inv_rho = 1.0 / jnp.maximum(rho, 1e-6)
    # (A A' + l_a)^-1 = U_a diag(1 / (e_a + l_a)) U_a'; B P_b = U_b D_b R, and symmetrically for P_b.
    p_a = xa.T @ (u_a @ (inv_a[:, None] * (u_a.T @ (u_b @ (d_b[:, None] * right))))) * inv_rho
    p_b = xb.T @ (u_b @ (inv_b[:, None] * (u_b.T @ (u_a @ (d_a[:, None] * left))))) * inv_rho
    pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, m - k)])  # noqa: E731  (pairs beyond n: rho 0)
    rho = jnp.minimum(pad(rho), MAX_RHO)
    return {"mu_a": mu_a, "mu_b": mu_b, "proj_a": pad(p_a), "proj_b": pad(p_b), "rho": rho, "keep": jnp.ones_like(rho)}


def init_gaussian_critic(da: int, db: int) -> dict:
    """Params of the same shapes as :func:`fit_gaussian_critic`'s, reading 0 everywhere (rho = 0)."""
    m = min(da, db)
    z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731
    return {"mu_a": z(da), "mu_b": z(db), "proj_a": z(da, m), "proj_b": z(db, m), "rho": z(m), "keep": jnp.ones((m,), jnp.float32)}


def keep_pairs(params: dict, rank) -> dict:
    """``params`` reading only the ``rank`` strongest canonical pairs (an int or an int32 scalar: a rank-r
    Gaussian model)."""
    m = params["rho"].shape[-1]
    return {**params, "keep": (jnp.arange(m) < rank).astype(jnp.float32)}


def pair_ranks(da: int, db: int) -> tuple[int, ...]:
    """The ranks the estimator compares on validation: 1, 2, 4, ... below m = min(da, db), and m."""
    m = min(da, db)
    out, r = [], 1
    while r < m:
        out.append(r)
        r *= 2
    return tuple(out) + (m,)


def _coefficients(params: dict):
    rho = params["rho"] * params["keep"]
    one = 1.0 - rho**2
    return -0.5 * jnp.log(one), rho / one, 0.5 * rho**2 / one  # constant, u v, u^2 and v^2 terms


def _variates(params: dict, a, b, dtype):
    u = (a.astype(jnp.float32) - params["mu_a"]).astype(dtype) @ params["proj_a"].astype(dtype)
    v = (b.astype(jnp.float32) - params["mu_b"]).astype(dtype) @ params["proj_b"].astype(dtype)
    return u.astype(jnp.float32), v.astype(jnp.float32)


def gaussian_critic(params: dict, a: jax.Array, b: jax.Array, dtype=jnp.float32) -> jax.Array:
    """f(a, b) f32[...] for paired rows ``a[..., da]``, ``b[..., db]`` (the formula of the module)."""
    c, cuv, cq = _coefficients(params)
    u, v = _variates(params, a, b, dtype)
    return jnp.sum(c + cuv * u * v - cq * (u**2 + v**2), axis=-1)


def gaussian_critic_matrix(params: dict, a: jax.Array, b: jax.Array, dtype=jnp.float32, block_rows: int = 128
                           ) -> jax.Array:
    """All B x B scores f32[B, B], ``[i, j] = f(a_i, b_j)``: one matmul of the canonical variates
    (``block_rows`` is unused, as for the separable critic)."""
    del block_rows
    c, cuv, cq = _coefficients(params)
    u, v = _variates(params, a, b, dtype)
    return jnp.sum(c) + (u * cuv) @ v.T - (u**2 @ cq)[:, None] - (v**2 @ cq)[None, :]


def gaussian_critic_scores(params: dict, a: jax.Array, b: jax.Array, neg_index: jax.Array, dtype=jnp.float32
                           ) -> tuple[jax.Array, jax.Array]:
    """``(pos f32[B], neg f32[B, K])`` from the B x B matrix."""
    s = gaussian_critic_matrix(params, a, b, dtype)
    return jnp.diagonal(s), jnp.take_along_axis(s, neg_index, axis=1)
