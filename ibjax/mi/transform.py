"""Per-coordinate maps of a group's inputs before the critic: standardisation and rank-Gaussianisation.

MI is invariant under invertible maps applied to each coordinate separately, so these change the
task the critic has to learn, not the quantity it estimates. A map is fitted on one group's training
pairs (:func:`fit_marginals`) and applied to every batch of that group, training, validation and
held-out alike (:func:`apply_marginals`, given the batch's tie-breaking uniforms); pure functions of arrays, vmappable over the group axis.

- ``"standardize"``: (x - mean) / scale per coordinate, scale = max(std, std_floor * rms), rms the
  root mean square of the side's coordinate stds. The floor keeps a coordinate that is nearly
  constant on the fitted rows (an MNIST pixel near the border, zero in nearly every image) from
  mapping an unseen value to thousands of its standard deviations: with the plain std, held-out
  I(X;T) reads of MNIST groups fell far below zero (the critic scores such rows wildly), where the
  floored map reads close to the rank map (docs/measurements.md, "Estimator inputs on MNIST
  pixels"). Still an invertible affine map: MI unchanged.
- ``"rank"``: rank-Gaussianisation, z = Phi^-1(F(x)) with F the empirical CDF of the fitted sample
  (Q knots per coordinate), linearly interpolated between knots so that it is strictly increasing on
  the fitted range (values beyond it are clamped to the extreme knots). Ties (pixel data: many equal
  values) are broken at random: a value equal to a block of tied knots takes a uniformly random
  position inside the block, from uniforms the caller passes (a randomised probability transform;
  the uniform draw is independent of everything else, so I(f(X, U); Y) = I(X; Y)).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct
from jax.scipy.special import ndtri

__all__ = ["Marginals", "fit_marginals", "apply_marginals", "rank_gaussianize"]


@struct.dataclass
class Marginals:
    """A fitted per-coordinate map of one side (a or b) of one group.

    Attributes:
      loc, scale: f32[d], the fitted mean and floored standard deviation ("standardize"; 0 and 1
        otherwise).
      knots: f32[Q, d], the fitted sample sorted per coordinate, unused rows +inf ("rank"; Q = 0
        otherwise).
      count: int32 scalar, the number of fitted rows (real knots).
    """

    loc: jax.Array
    scale: jax.Array
    knots: jax.Array
    count: jax.Array


STD_FLOOR = 0.5
"""``"standardize"`` divides a coordinate by at least this fraction of the side's rms coordinate std."""


def fit_marginals(x: jax.Array, valid: jax.Array, kind: str) -> Marginals:
    """Fit the ``kind`` map (``"none"``, ``"standardize"``, ``"rank"``) on rows x f[Q, d] where valid bool[Q]."""
    d = x.shape[-1]
    w = valid.astype(jnp.float32)[:, None]
    count = jnp.sum(valid).astype(jnp.int32)
    loc = jnp.zeros((d,), jnp.float32)
    scale = jnp.ones((d,), jnp.float32)
    knots = jnp.zeros((0, d), jnp.float32)
    if kind == "standardize":
        m = jnp.maximum(count, 1).astype(jnp.float32)
        loc = jnp.sum(w * x, axis=0) / m
        std = jnp.sqrt(jnp.sum(w * (x - loc) ** 2, axis=0) / m)
        # A constant coordinate's float32 std is rounding noise, not spread.
        std = jnp.where(std > 1e-6 * jnp.maximum(jnp.abs(loc), 1.0), std, 0.0)
        rms = jnp.sqrt(jnp.mean(std**2))
        scale = jnp.where(rms > 0, jnp.maximum(std, STD_FLOOR * rms), 1.0)
    elif kind == "rank":
        knots = jnp.sort(jnp.where(valid[:, None], x.astype(jnp.float32), jnp.inf), axis=0)
    elif kind != "none":
        raise ValueError(f"unknown preprocess {kind!r}; choose 'none', 'standardize' or 'rank'")
    return Marginals(loc=loc, scale=scale, knots=knots, count=count)


def rank_gaussianize(knots: jax.Array, count: jax.Array, x: jax.Array, u: jax.Array) -> jax.Array:
    """Normal scores f32[B, d] of x f[B, d] against sorted knots f32[Q, d] (the first ``count`` real).

    A value's fractional rank r in [0, count - 1]: inside a block of knots equal to it, lo + u * (hi -
    1 - lo) with u f[B, d] uniform in [0, 1) (lo, hi: knots below it / not above it); between two
    knots, linear interpolation of their ranks; beyond the extremes, 0 or count - 1. Then
    z = Phi^-1((r + 1) / (count + 1)).
    """
    x = x.astype(jnp.float32)
    cols = lambda side: jax.vmap(  # noqa: E731
        lambda k, v: jnp.searchsorted(k, v, side=side), in_axes=(1, 1), out_axes=1
    )(knots, x)
    lo, hi = cols("left"), cols("right")
    below = jnp.take_along_axis(knots, jnp.clip(lo - 1, 0, knots.shape[0] - 1), axis=0)
    above = jnp.take_along_axis(knots, jnp.clip(lo, 0, knots.shape[0] - 1), axis=0)
    gap = jnp.where(above > below, above - below, 1.0)
    r_between = (lo - 1) + (x - below) / gap
    r_tied = lo + u * (hi - 1 - lo)
    last = (count - 1).astype(jnp.float32)
    r = jnp.where(hi > lo, r_tied, jnp.where(lo <= 0, 0.0, jnp.where(lo >= count, last, r_between)))
    r = jnp.clip(r, 0.0, last)
    return ndtri((r + 1.0) / (count.astype(jnp.float32) + 1.0))


def apply_marginals(m: Marginals, x: jax.Array, kind: str, u: Optional[jax.Array] = None) -> jax.Array:
    """Apply a fitted map to a batch x f[B, d]; ``u`` f[B, d] uniform in [0, 1) breaks ties ("rank"
    only, required there). Returns f32[B, d] (x itself for "none")."""
    if kind == "none":
        return x
    if kind == "standardize":
        return (x.astype(jnp.float32) - m.loc) / m.scale
    if u is None:
        raise ValueError("rank-Gaussianisation needs tie-breaking uniforms u of the batch's shape")
    return rank_gaussianize(m.knots, m.count, x, u)
