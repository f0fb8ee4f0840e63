"""Variational lower bounds on mutual information, as pure functions of critic scores (nats).

Every bound takes ``pos f32[B]`` (critic scores of the B positive pairs f(a_i, b_i)), ``neg f32[B, K]``
(scores f(a_i, b_j) of K negatives per row, b_j drawn from the product of marginals) and an optional
``weight f32[B]`` (1 for real rows, 0 for padding) and returns a scalar estimate in nats.

- :func:`infonce` (van den Oord et al. 2018; Poole et al. 2019): mean_i f_ii - mean_i logsumexp(f_ii,
  f_ij1..f_ijK) + log(K + 1). Low variance, biased low, and it can never exceed log(K + 1): that cap
  is structural (the positive is inside the logsumexp), so a true MI above it is under-read.
  With negatives drawn from the batch with replacement this is exactly the reference's estimator;
  with K = B - 1 negatives "all other rows" it is the all-pairs (batch) InfoNCE, capped at log B
  (:func:`infonce_all_pairs` computes it from the B x B score matrix).
- :func:`nwj` (Nguyen, Wainwright & Jordan 2010; f-GAN KL): mean f_ii - mean exp(f_ij - 1). Unbiased
  for a fixed critic, no cap, but its variance grows like exp(MI).
- :func:`dv` (Donsker-Varadhan; MINE, Belghazi et al. 2018): mean f_ii - log mean exp(f_ij). Tighter
  than NWJ for the same critic, no cap; the log of a batch mean makes its gradient biased (MINE's
  moving-average correction is not applied here) and its variance is high.
"""

from __future__ import annotations

from typing import Callable, Optional

import math

import jax
import jax.numpy as jnp

__all__ = ["infonce", "infonce_all_pairs", "nwj", "dv", "BOUNDS", "get_bound", "bound_cap"]


def _weights(pos: jax.Array, weight: Optional[jax.Array]) -> jax.Array:
    return jnp.ones_like(pos) if weight is None else weight.astype(pos.dtype)


def _wmean(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def infonce(pos: jax.Array, neg: jax.Array, weight: Optional[jax.Array] = None) -> jax.Array:
    """InfoNCE with K negatives per row; at most log(K + 1) nats."""
    w = _weights(pos, weight)
    k = neg.shape[-1]
    lse = jax.nn.logsumexp(jnp.concatenate([pos[:, None], neg], axis=-1), axis=-1)
    return _wmean(pos - lse, w) + jnp.log(k + 1.0)


def infonce_all_pairs(scores: jax.Array) -> jax.Array:
    """All-pairs (batch) InfoNCE from the full score matrix ``scores f32[B, B]``, ``scores[i, j] = f(a_i, b_j)``.

    Row i's positive is ``scores[i, i]`` and its negatives are the other B - 1 entries of the row; at
    most log B nats. Equal to :func:`infonce` with ``pos = diag(scores)`` and the off-diagonal
    entries as ``neg`` (the estimator's ``negative_sampling="all"``).
    """
    b = scores.shape[-1]
    return jnp.mean(jnp.diagonal(scores) - jax.nn.logsumexp(scores, axis=-1)) + jnp.log(float(b))


def nwj(pos: jax.Array, neg: jax.Array, weight: Optional[jax.Array] = None) -> jax.Array:
    """NWJ / f-GAN KL bound: E_p[f] - E_q[exp(f - 1)] (no cap)."""
    w = _weights(pos, weight)
    return _wmean(pos, w) - _wmean(jnp.mean(jnp.exp(neg - 1.0), axis=-1), w)


def dv(pos: jax.Array, neg: jax.Array, weight: Optional[jax.Array] = None) -> jax.Array:
    """Donsker-Varadhan / MINE bound: E_p[f] - log E_q[exp f] (no cap)."""
    w = _weights(pos, weight)
    k = neg.shape[-1]
    # log of the weighted mean of exp(neg) over the valid rows' K negatives each.
    lse_rows = jax.nn.logsumexp(neg, axis=-1) - jnp.log(float(k))
    log_mean = jax.nn.logsumexp(lse_rows, b=w) - jnp.log(jnp.maximum(jnp.sum(w), 1.0))
    return _wmean(pos, w) - log_mean


BOUNDS: dict[str, Callable] = {"infonce": infonce, "nwj": nwj, "dv": dv}


def get_bound(name: str) -> Callable:
    if name not in BOUNDS:
        raise ValueError(f"unknown bound {name!r}; choose one of {sorted(BOUNDS)}")
    return BOUNDS[name]


def bound_cap(name: str, negatives: int) -> float:
    """The largest value the bound can take with ``negatives`` negatives per row (inf if none)."""
    return math.log(negatives + 1.0) if name == "infonce" else float("inf")
