"""Variational lower bounds on mutual information, as pure functions of critic scores (nats).

Every bound takes ``pos f32[B]`` (critic scores of the B positive pairs f(a_i, b_i)), ``neg f32[B, K]``
(scores f(a_i, b_j) of K negatives per row, b_j drawn from the product of marginals) and an optional
``weight f32[B]`` (1 for real rows, 0 for padding) and returns a scalar estimate in nats.

- :func:`infonce` (van den Oord et al. 2018; Poole et al. 2019): mean_i f_ii - mean_i logsumexp(f_ii,
  f_ij1..f_ijK) + log(K + 1). Low variance, biased low, and it can never exceed log(K + 1): that cap
  is structural (the positive is inside the logsumexp), so a true MI above it is under-read.
  With negatives drawn from the batch with replacement this is exactly the reference's estimator
  (the authors' ``compute_infoNCE`` subtracts the batch mean of the row logsumexps from each row's
  positive score and averages: the same number); with K = B - 1 negatives "all other rows" it is
  the all-pairs (batch) InfoNCE, capped at log B (:func:`infonce_all_pairs` computes it from the
  B x B score matrix).
- :func:`nwj` (Nguyen, Wainwright & Jordan 2010; f-GAN KL): mean f_ii - mean exp(f_ij - 1). Unbiased
  for a fixed critic, no cap, but its variance grows like exp(MI).
- :func:`dv` (Donsker-Varadhan; MINE, Belghazi et al. 2018): mean f_ii - log mean exp(f_ij). Tighter
  than NWJ for the same critic, no cap; the log of a batch mean makes its gradient biased (MINE's
  moving-average correction is not applied here) and its variance is high.

Each bound also has a per-row form (:func:`bound_terms`): ``terms f32[B]`` whose weighted mean is the
bound. For InfoNCE and NWJ a row's term is its own contribution; for DV (a log of a batch mean, not a
sum over rows) the terms are the delta-method linearisation, whose mean is still exactly the bound.
The estimator's standard errors come from the spread of these terms over held-out rows.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

__all__ = [
    "infonce",
    "infonce_all_pairs",
    "nwj",
    "dv",
    "infonce_terms",
    "infonce_all_pairs_terms",
    "nwj_terms",
    "dv_terms",
    "BOUNDS",
    "get_bound",
    "bound_terms",
    "bound_cap",
]


def _weights(pos: jax.Array, weight: Optional[jax.Array]) -> jax.Array:
    return jnp.ones_like(pos) if weight is None else weight.astype(pos.dtype)


def _wmean(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def infonce_terms(pos: jax.Array, neg: jax.Array, weight: Optional[jax.Array] = None) -> jax.Array:
    """Per-row InfoNCE terms f32[B]: f_ii - logsumexp(f_ii, f_ij1..f_ijK) + log(K + 1) (each <= log(K + 1))."""
    del weight  # every row's term is its own
    lse = jax.nn.logsumexp(jnp.concatenate([pos[:, None], neg], axis=-1), axis=-1)
    return pos - lse + jnp.log(neg.shape[-1] + 1.0)


def infonce(pos: jax.Array, neg: jax.Array, weight: Optional[jax.Array] = None) -> jax.Array:
    """InfoNCE with K negatives per row; at most log(K + 1) nats."""
    return _wmean(infonce_terms(pos, neg), _weights(pos, weight))


def infonce_all_pairs(scores: jax.Array) -> jax.Array:
    """All-pairs (batch) InfoNCE from the full score matrix ``scores f32[B, B]``, ``scores[i, j] = f(a_i, b_j)``.

    Row i's positive is ``scores[i, i]`` and its negatives are the other B - 1 entries of the row; at
    most log B nats. Equal to :func:`infonce` with ``pos = diag(scores)`` and the off-diagonal
    entries as ``neg`` (the estimator's ``negative_sampling="all"``).
    """
    b = scores.shape[-1]
    return jnp.mean(jnp.diagonal(scores) - jax.nn.logsumexp(scores, axis=-1)) + jnp.log(float(b))


def infonce_all_pairs_terms(scores: jax.Array, n_valid) -> jax.Array:
    """Per-row all-pairs InfoNCE terms f32[B] of a score matrix whose first ``n_valid`` rows and
    columns are real: row i's negatives are the other real columns, ``scores[i, i] - logsumexp_j
    scores[i, j] + log(n_valid)`` (at most log n_valid nats). Rows past n_valid are 0."""
    b = scores.shape[-1]
    real = jnp.arange(b) < n_valid
    lse = jax.nn.logsumexp(jnp.where(real[None, :], scores, -jnp.inf), axis=-1)
    terms = jnp.diagonal(scores) - lse + jnp.log(jnp.maximum(n_valid, 1).astype(jnp.float32))
    return jnp.where(real, terms, 0.0)


def nwj_terms(pos: jax.Array, neg: jax.Array, weight: Optional[jax.Array] = None) -> jax.Array:
    """Per-row NWJ terms f32[B]: f_ii - mean_k exp(f_ik - 1)."""
    del weight
    return pos - jnp.mean(jnp.exp(neg - 1.0), axis=-1)


def nwj(pos: jax.Array, neg: jax.Array, weight: Optional[jax.Array] = None) -> jax.Array:
    """NWJ / f-GAN KL bound: E_p[f] - E_q[exp(f - 1)] (no cap)."""
    return _wmean(nwj_terms(pos, neg), _weights(pos, weight))


def _dv_log_mean(neg: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log of the weighted mean of exp(neg) over the weighted rows, per-row log means f32[B])."""
    lse_rows = jax.nn.logsumexp(neg, axis=-1) - jnp.log(float(neg.shape[-1]))
    log_mean = jax.nn.logsumexp(lse_rows, b=w) - jnp.log(jnp.maximum(jnp.sum(w), 1.0))
    return log_mean, lse_rows


def dv_terms(pos: jax.Array, neg: jax.Array, weight: Optional[jax.Array] = None) -> jax.Array:
    """Delta-method terms f32[B] of the DV bound: f_ii - m_i / m - log m + 1, with m_i = mean_k exp(f_ik)
    and m the weighted mean of the m_i; their weighted mean is exactly :func:`dv`."""
    log_mean, lse_rows = _dv_log_mean(neg, _weights(pos, weight))
    return pos - jnp.exp(lse_rows - log_mean) - log_mean + 1.0


def dv(pos: jax.Array, neg: jax.Array, weight: Optional[jax.Array] = None) -> jax.Array:
    """Donsker-Varadhan / MINE bound: E_p[f] - log E_q[exp f] (no cap)."""
    w = _weights(pos, weight)
    log_mean, _ = _dv_log_mean(neg, w)
    return _wmean(pos, w) - log_mean


BOUNDS: dict[str, Callable] = {"infonce": infonce, "nwj": nwj, "dv": dv}
_TERMS: dict[str, Callable] = {"infonce": infonce_terms, "nwj": nwj_terms, "dv": dv_terms}


def get_bound(name: str) -> Callable:
    """The bound ``(pos, neg, weight=None) -> scalar`` named ``name`` (a key of :data:`BOUNDS`)."""
    if name not in BOUNDS:
        raise ValueError(f"unknown bound {name!r}; choose one of {sorted(BOUNDS)}")
    return BOUNDS[name]


def bound_terms(name: str) -> Callable:
    """The per-row form ``(pos, neg, weight=None) -> terms f32[B]`` of bound ``name``: the bound is the
    weighted mean of the terms (with the same ``weight``)."""
    get_bound(name)
    return _TERMS[name]


def bound_cap(name: str, negatives: int) -> float:
    """The largest value the bound can take with ``negatives`` negatives per row (inf if none)."""
    return math.log(negatives + 1.0) if name == "infonce" else float("inf")
