"""Per-coordinate maps of a group's inputs before the critic: standardisation and rank-Gaussianisation.

MI is invariant under invertible maps applied to each coordinate separately, so these change the
task the critic has to learn, not the quantity it estimates. A map is fitted on one group's training
pairs (:func:`fit_marginals`) and applied to every batch of that group, training, validation and
held-out alike (:func:`apply_marginals`, given the batch's tie-breaking uniforms); pure functions of
arrays, vmappable over the group axis.

- ``"standardize"``: (x - mean) / scale per coordinate, scale = max(std, std_floor * rms), rms the
  root mean square of the side's coordinate stds. The floor keeps a coordinate that is nearly
  constant on the fitted rows (an MNIST pixel near the border, zero in nearly every image) from
  mapping an unseen value to thousands of its standard deviations: with the plain std, held-out
  I(X;T) reads of MNIST groups fell far below zero (the critic scores such rows wildly), where the
  floored map reads close to the rank map (docs/measurements.md, "Estimator inputs on MNIST
  pixels"). Still an invertible affine map: MI unchanged.
- ``"rank"``: rank-Gaussianisation, z = Phi^-1((r + 1) / (n + 1)) with r a value's fractional rank
  among the n fitted values. The ranks are known at Q knots per coordinate (every fitted value, or
  Q of its order statistics at ranks of equally spaced normal scores) and interpolated linearly between them, so the
  map is strictly increasing on the fitted range (values beyond it are clamped to the extreme
  ranks). Ties (pixel data: many equal values) are broken at random: a value equal to a knot takes
  a uniformly random rank inside the block of fitted values equal to it, from uniforms the caller
  passes (a randomised probability transform; the uniform draw is independent of everything else,
  so I(f(X, U); Y) = I(X; Y)). Any strictly increasing map keeps MI, so fewer knots change how
  Gaussian the result is, not what is estimated; they make the map much cheaper to apply to wide
  inputs such as pixels, where it otherwise dominates the estimator's cost (docs/estimator.md).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct
from jax.scipy.special import ndtri

__all__ = ["Marginals", "fit_marginals", "apply_marginals", "rank_gaussianize", "rank_interval", "interval_scores",
           "premap_marginals", "finish_premapped", "knot_count"]


@struct.dataclass
class Marginals:
    """A fitted per-coordinate map of one side (a or b) of one group.

    Attributes:
      loc, scale: f32[d], the fitted mean and floored standard deviation ("standardize"; 0 and 1
        otherwise).
      knots: f32[Q, d, 3] ("rank"; Q = 0 otherwise): per coordinate, Q fitted values in increasing
        order (padding +inf) with the first and the last rank (0-based, in the whole fitted sample)
        of the fitted values equal to each.
      count: int32 scalar, the number of fitted rows n.
    """

    loc: jax.Array
    scale: jax.Array
    knots: jax.Array
    count: jax.Array


STD_FLOOR = 0.5
"""``"standardize"`` divides a coordinate by at least this fraction of the side's rms coordinate std."""

_TWO_LEVEL_MAX = 1024
"""Up to this many knots, :func:`_first_not_below` compares against every sqrt(Q)-th knot and then
within one segment (vectorised compares); beyond it a binary search is cheaper. On a 2-core CPU,
128 x 784 values: 0.9 ms against 3.7 ms for jnp.searchsorted at 256 knots, 3.2 against 4.3 ms at
1,024, 8.9 against 6.5 ms at 2,880."""


def knot_count(rows: int, knots: int) -> int:
    """Knots of a "rank" map fitted on ``rows`` rows with ``knots`` asked (0: every row)."""
    return rows if knots <= 0 or knots >= rows else int(knots)


def _sort_columns(x: jax.Array) -> jax.Array:
    """``jnp.sort(x, axis=0)`` for float32 without NaN, through order-preserving int32 keys: XLA:CPU
    sorts int32 about 4x faster than float32 (whose comparator orders NaNs)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    flip = lambda b: b ^ ((b >> 31) & 0x7FFFFFFF)  # noqa: E731 - its own inverse
    return jax.lax.bitcast_convert_type(flip(jnp.sort(flip(bits), axis=0)), jnp.float32)


def _searchsorted_columns(table: jax.Array, x: jax.Array, side: str) -> jax.Array:
    """Per column c, ``searchsorted(table[:, c], x[:, c], side)``: int32[B, d]."""
    return jax.vmap(lambda t, v: jnp.searchsorted(t, v, side=side), in_axes=(1, 1), out_axes=1)(table, x)


def _first_not_below(knots: jax.Array, x: jax.Array) -> jax.Array:
    """Per coordinate, the index of the first knot >= x (Q if none): int32[B, d] for sorted knots
    f32[Q, d] and x f32[B, d] (``searchsorted(side="left")`` column by column)."""
    q, d = knots.shape
    if q > _TWO_LEVEL_MAX:
        return _searchsorted_columns(knots, x, "left").astype(jnp.int32)
    s = max(1, int(round(q**0.5)))
    m = -(-q // s)
    padded = jnp.concatenate([knots, jnp.full((m * s - q, d), jnp.inf, knots.dtype)]) if m * s > q else knots
    segments = jnp.transpose(padded.reshape(m, s, d), (2, 0, 1))  # [d, m, s]
    # Segment c holds knots c*s .. c*s + s - 1; the number of segments whose last knot is below x
    # is the segment of the first knot >= x.
    seg = jnp.minimum(jnp.sum(segments[None, :, :, -1] < x[:, :, None], axis=-1), m - 1)  # [B, d]
    inside = segments[jnp.arange(d)[None, :], seg]  # [B, d, s]
    return (seg * s + jnp.sum(inside < x[..., None], axis=-1)).astype(jnp.int32)


def _fit_rank(x: jax.Array, valid: jax.Array, knots: int) -> jax.Array:
    ordered = _sort_columns(jnp.where(valid[:, None], x.astype(jnp.float32), jnp.inf))  # [R, d]
    rows = ordered.shape[0]
    q = knot_count(rows, knots)
    if q == rows:
        values = ordered
    else:
        # Order statistics at ranks whose normal scores are equally spaced, from the first rank's to
        # the last's: the map's slope in z is steep in the tails, where equally spaced ranks would
        # leave wide gaps to interpolate across.
        n = jnp.sum(valid).astype(jnp.float32)
        edge = -ndtri(1.0 / (n + 1.0))
        scores = jnp.linspace(-1.0, 1.0, q) * edge
        at = jnp.clip(jnp.round((n + 1.0) * jax.scipy.special.ndtr(scores) - 1.0), 0, n - 1).astype(jnp.int32)
        values = ordered[at]
    first = _searchsorted_columns(ordered, values, "left")
    last = _searchsorted_columns(ordered, values, "right") - 1
    return jnp.stack([values, first.astype(jnp.float32), last.astype(jnp.float32)], axis=-1)


def fit_marginals(x: jax.Array, valid: jax.Array, kind: str, knots: int = 0) -> Marginals:
    """Fit the ``kind`` map (``"none"``, ``"standardize"``, ``"rank"``) on rows x f[R, d] where valid
    bool[R]; ``knots`` ("rank" only): Q order statistics per coordinate, at ranks whose normal
    scores are equally spaced (0, or at least the rows: every row; :func:`knot_count`)."""
    d = x.shape[-1]
    w = valid.astype(jnp.float32)[:, None]
    count = jnp.sum(valid).astype(jnp.int32)
    loc = jnp.zeros((d,), jnp.float32)
    scale = jnp.ones((d,), jnp.float32)
    table = jnp.zeros((0, d, 3), jnp.float32)
    if kind == "standardize":
        m = jnp.maximum(count, 1).astype(jnp.float32)
        loc = jnp.sum(w * x, axis=0) / m
        std = jnp.sqrt(jnp.sum(w * (x - loc) ** 2, axis=0) / m)
        # A constant coordinate's float32 std is rounding noise, not spread.
        std = jnp.where(std > 1e-6 * jnp.maximum(jnp.abs(loc), 1.0), std, 0.0)
        rms = jnp.sqrt(jnp.mean(std**2))
        scale = jnp.where(rms > 0, jnp.maximum(std, STD_FLOOR * rms), 1.0)
    elif kind == "rank":
        table = _fit_rank(x, valid, knots)
    elif kind != "none":
        raise ValueError(f"unknown preprocess {kind!r}; choose 'none', 'standardize' or 'rank'")
    return Marginals(loc=loc, scale=scale, knots=table, count=count)


def rank_interval(m: Marginals, x: jax.Array) -> jax.Array:
    """The probability-transform interval f32[B, d, 2] of x f[B, d] under a fitted "rank" map ``m``.

    A value's fractional rank: equal to a knot, anywhere from the first to the last rank of the
    fitted values equal to it; between two knots, linear interpolation from the lower one's last rank
    to the upper one's first (one point); beyond the extremes, 0 or n - 1. As probabilities
    (r + 1) / (n + 1): ``[..., 0]`` the interval's start, ``[..., 1]`` its end.
    """
    x = x.astype(jnp.float32)
    q = m.knots.shape[0]
    j = _first_not_below(m.knots[..., 0], x)
    at = jnp.take_along_axis(m.knots, jnp.clip(j, 0, q - 1)[..., None], axis=0)  # [B, d, 3]
    prev = jnp.take_along_axis(m.knots, jnp.clip(j - 1, 0, q - 1)[..., None], axis=0)
    value, first, last = at[..., 0], at[..., 1], at[..., 2]
    below, below_last = prev[..., 0], prev[..., 2]
    top = (m.count - 1).astype(jnp.float32)
    beyond = (j >= q) | jnp.isinf(value)  # past the last fitted value (padding knots are +inf)
    tied = ~beyond & (value == x)
    gap = jnp.where(value > below, value - below, 1.0)
    between = below_last + (x - below) / gap * (first - below_last)
    point = jnp.where(beyond, top, jnp.where(j == 0, 0.0, between))
    r = jnp.clip(jnp.stack([jnp.where(tied, first, point), jnp.where(tied, last, point)], axis=-1), 0.0, top)
    return (r + 1.0) / (m.count.astype(jnp.float32) + 1.0)


def interval_scores(interval: jax.Array, u: jax.Array) -> jax.Array:
    """Normal scores f32[B, d] of probability intervals f32[B, d, 2] (:func:`rank_interval`) at
    uniforms u f[B, d]: Phi^-1(start + u * (end - start))."""
    p = interval[..., 0] + u * (interval[..., 1] - interval[..., 0])
    return ndtri(p)


def rank_gaussianize(m: Marginals, x: jax.Array, u: jax.Array) -> jax.Array:
    """Normal scores f32[B, d] of x f[B, d] under a fitted "rank" map ``m``, ties broken by u f[B, d]
    uniform in [0, 1): a tied value's rank is first + u * (last - first)."""
    return interval_scores(rank_interval(m, x), u)


def premap_marginals(m: Marginals, x: jax.Array, kind: str) -> jax.Array:
    """The part of :func:`apply_marginals` that needs no uniforms, for rows mapped once and read many
    times: f32[B, d, 2] intervals for "rank", the mapped f32[B, d] for "standardize", x itself for
    "none"; finish a batch of them with :func:`finish_premapped`."""
    if kind == "none":
        return x
    if kind == "standardize":
        return (x.astype(jnp.float32) - m.loc) / m.scale
    return rank_interval(m, x)


def finish_premapped(mapped: jax.Array, kind: str, u: Optional[jax.Array] = None) -> jax.Array:
    """A batch of :func:`premap_marginals` rows as the map's output f32[B, d] (``u`` as
    :func:`apply_marginals`)."""
    if kind != "rank":
        return mapped
    if u is None:
        raise ValueError("rank-Gaussianisation needs tie-breaking uniforms u of the batch's shape")
    return interval_scores(mapped, u)


def apply_marginals(m: Marginals, x: jax.Array, kind: str, u: Optional[jax.Array] = None) -> jax.Array:
    """Apply a fitted map to a batch x f[B, d]; ``u`` f[B, d] uniform in [0, 1) breaks ties ("rank"
    only, required there). Returns f32[B, d] (x itself for "none"). The same as mapping rows once
    (:func:`premap_marginals`) and finishing them (:func:`finish_premapped`)."""
    return finish_premapped(premap_marginals(m, x, kind), kind, u)
