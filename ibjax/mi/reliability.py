"""How far an estimate can be trusted: a convergence verdict and the held-out read's standard error.

- Convergence: a straight line fitted (least squares) to the last W epochs of a read (the validation
  read when there is a validation split, else the training trajectory) gives the read's rise over
  the window and that rise's standard error from the residuals. A still-rising critic under-reads, so
  a rise above both ``2 x its standard error`` and an absolute tolerance means "not converged". When
  the last critic is read (``select="last"``) a significant fall is flagged too: the critic is
  drifting (overfitting), so the last epoch is not a stable read. With ``select="best"`` a fall after
  the peak is what selection is for, and only a rise is flagged.
- Standard error of the held-out read: the read is the mean over the held-out rows of per-row bound
  terms (averaged over the shuffled passes); its standard error is their standard deviation over
  sqrt(rows). It measures the noise of the held-out sample for the critic that was trained, not the
  spread between critics trained from other seeds, nor the bound's own bias (a lower bound reads
  below the truth by however far the critic is from optimal).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["MIN_WINDOW", "trend", "convergence_verdict", "mean_and_se"]

MIN_WINDOW = 5
"""Fewest epochs a trend is judged on; shorter windows get an infinite standard error (not converged)."""


def trend(y: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
    """Rise of y f32[..., E] over its last ``window`` entries from a least-squares line, and its
    standard error (nats). Returns ``(rise f32[...], rise_se f32[...])``; the se is inf for a window
    shorter than :data:`MIN_WINDOW`."""
    y = y[..., -window:]
    t = jnp.arange(window, dtype=jnp.float32)
    tc = t - jnp.mean(t)
    sxx = jnp.sum(tc**2)
    yc = y - jnp.mean(y, axis=-1, keepdims=True)
    slope = jnp.sum(tc * yc, axis=-1) / sxx
    resid = yc - slope[..., None] * tc
    dof = window - 2
    if window < MIN_WINDOW:  # too few points to tell a trend from noise
        return slope * (window - 1), jnp.full(slope.shape, jnp.inf)
    s2 = jnp.sum(resid**2, axis=-1) / dof
    return slope * (window - 1), jnp.sqrt(s2 / sxx) * (window - 1)


def convergence_verdict(rise: jax.Array, rise_se: jax.Array, tol: float, two_sided: bool) -> jax.Array:
    """bool: the rise is within its noise (<= max(2 se, tol)); ``two_sided`` also bounds a fall. False
    where the se is not finite (a window shorter than 5 epochs)."""
    limit = jnp.maximum(2.0 * rise_se, tol)
    ok = rise <= limit
    if two_sided:
        ok = ok & (rise >= -limit)
    return ok & jnp.isfinite(rise) & jnp.isfinite(rise_se)


def mean_and_se(terms: jax.Array, weight: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted mean of terms f32[..., N] over weight f32[..., N] (0/1) and its standard error
    (sample std over sqrt(count)); nan where fewer than 2 rows count."""
    n = jnp.sum(weight, axis=-1)
    mean = jnp.sum(terms * weight, axis=-1) / jnp.maximum(n, 1.0)
    var = jnp.sum(weight * (terms - mean[..., None]) ** 2, axis=-1) / jnp.maximum(n - 1.0, 1.0)
    se = jnp.sqrt(var / jnp.maximum(n, 1.0))
    return jnp.where(n >= 1, mean, jnp.nan), jnp.where(n >= 2, se, jnp.nan)
