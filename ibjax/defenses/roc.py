"""How well scores separate positives from negatives: AUROC, its bootstrap interval, rates at a threshold.

Positives are what a detector should flag (poisoned samples, backdoored models); a higher score is
more suspicious. Every function is a pure function of arrays, usable under jit and vmap (a
population's member axis in front), and takes an optional ``valid`` mask so padded rows count for
nothing.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["auroc", "auroc_interval", "threshold_at_fpr", "detection_rates", "roc_curve"]


def _weights(labels: jax.Array, valid: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
    pos = jnp.asarray(labels, bool)
    ok = jnp.ones(pos.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return (pos & ok).astype(jnp.float32), (~pos & ok).astype(jnp.float32)


def _weighted_auroc(scores: jax.Array, w_pos: jax.Array, w_neg: jax.Array) -> jax.Array:
    # Mann-Whitney: P(s+ > s-) + P(s+ = s-) / 2, with the negatives' weight below and at each score
    # read from prefix sums over the sorted scores (O(N log N), exact under ties).
    s = jnp.asarray(scores, jnp.float32)
    order = jnp.argsort(s)
    sorted_s = s[order]
    cum = jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.cumsum(w_neg[order])])
    lo = jnp.searchsorted(sorted_s, s, side="left")
    hi = jnp.searchsorted(sorted_s, s, side="right")
    below, equal = cum[lo], cum[hi] - cum[lo]
    num = jnp.sum(w_pos * (below + 0.5 * equal))
    den = jnp.sum(w_pos) * jnp.sum(w_neg)
    return jnp.where(den > 0, num / jnp.maximum(den, 1e-30), jnp.nan)


@jax.jit
def auroc(scores: jax.Array, labels: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
    """Area under the ROC curve of ``scores`` f[N] for ``labels`` bool[N] (True: positive).

    The probability that a positive scores above a negative, ties counting one half (equal to
    scikit-learn's ``roc_auc_score``). ``valid`` bool[N] (default all) drops rows. NaN when either
    class is empty. Returns f32[].
    """
    w_pos, w_neg = _weights(labels, valid)
    return _weighted_auroc(scores, w_pos, w_neg)


def _class_resample(u: jax.Array, member: jax.Array) -> jax.Array:
    """Counts f32[N] of a resample with replacement of the rows where ``member`` holds (as many draws
    as members), from uniforms u f32[N]."""
    n = jnp.sum(member).astype(jnp.int32)
    rows = jnp.argsort(~member, stable=True)  # members first
    pick = rows[jnp.minimum(jnp.floor(u * n).astype(jnp.int32), jnp.maximum(n - 1, 0))]
    active = (jnp.arange(u.shape[0]) < n).astype(jnp.float32)
    return jax.ops.segment_sum(active, pick, num_segments=u.shape[0])


@functools.partial(jax.jit, static_argnames=("resamples",))
def auroc_interval(key: jax.Array, scores: jax.Array, labels: jax.Array, valid: Optional[jax.Array] = None, *,
                   resamples: int = 1000, level: float = 0.95) -> tuple[jax.Array, jax.Array, jax.Array]:
    """AUROC and its stratified-bootstrap percentile interval: ``(auroc, low, high)``, each f32[].

    Each resample draws the positives and the negatives with replacement, each class keeping its
    size (so every resample has both classes, which matters for the few models of a detection
    population). ``level`` is the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
    """
    w_pos, w_neg = _weights(labels, valid)
    keys = jax.random.split(key, resamples)

    def one(k):
        u_pos, u_neg = jax.random.uniform(k, (2, w_pos.shape[0]))
        return _weighted_auroc(scores, _class_resample(u_pos, w_pos > 0), _class_resample(u_neg, w_neg > 0))

    boot = jax.lax.map(one, keys)
    tail = (1.0 - level) / 2.0
    low, high = jnp.nanquantile(boot, jnp.asarray([tail, 1.0 - tail]))
    return _weighted_auroc(scores, w_pos, w_neg), low, high


@jax.jit
def threshold_at_fpr(negative_scores: jax.Array, fpr: float = 0.05, valid: Optional[jax.Array] = None) -> jax.Array:
    """The smallest threshold t with at most a fraction ``fpr`` of the negatives scoring above it.

    Set on negatives only (clean models, clean samples), as a defender who has no positives does;
    :func:`detection_rates` flags ``score > t``. ``negative_scores`` f[N], ``valid`` bool[N]. f32[].
    """
    s = jnp.asarray(negative_scores, jnp.float32)
    ok = jnp.ones(s.shape, bool) if valid is None else jnp.asarray(valid, bool)
    n = jnp.sum(ok)
    sorted_s = jnp.sort(jnp.where(ok, s, jnp.inf))  # invalid rows last
    # at most floor(fpr * n) negatives may lie above t: t is the order statistic just below them
    k = jnp.clip(n - jnp.floor(fpr * n).astype(jnp.int32) - 1, 0, jnp.maximum(n - 1, 0))
    return sorted_s[k]


@jax.jit
def detection_rates(scores: jax.Array, labels: jax.Array, threshold: jax.Array,
                    valid: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """``(TPR, FPR)`` f32[] of flagging ``scores > threshold`` for ``labels`` bool[N]."""
    w_pos, w_neg = _weights(labels, valid)
    flag = (jnp.asarray(scores, jnp.float32) > threshold).astype(jnp.float32)
    tpr = jnp.sum(flag * w_pos) / jnp.maximum(jnp.sum(w_pos), 1.0)
    fpr = jnp.sum(flag * w_neg) / jnp.maximum(jnp.sum(w_neg), 1.0)
    return tpr, fpr


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` float64 arrays of the ROC curve from (0, 0) to (1, 1), one point per distinct
    score (host-side, for plots and tables)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last row of each run of equal scores
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / max(y.sum(), 1)]
    fpr = np.r_[0.0, fp / max((~y).sum(), 1)]
    return fpr, tpr
