"""Spectral signatures (Tran, Li and Madry, NeurIPS 2018): poisoned samples stand out along the top
singular direction of their label's centred representations.

Per training label c: centre the representations of the samples labelled c, take the top right
singular vector v_c of the centred matrix (the top eigenvector of the label's covariance), and score
each sample by its squared projection ((t_i - mean_c) . v_c)^2. The samples with the largest scores
of each label are flagged (BackdoorBench's CIFAR-10 detection configuration: the top 15% of every
label, its 85th percentile). ``centred=False`` is BackdoorBench's score: the absolute projection of
the *uncentred* representation on the centred matrix's direction, |t_i . v_c|, which ranks a label's
rows by their distance from the origin along v_c rather than from the label's mean.

Pure functions of arrays; the label axis is handled with masks, so everything is static-shaped and
vmaps over a population's member axis.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

__all__ = ["spectral_scores", "flag_top_per_label"]


def _label_masks(labels: jax.Array, num_labels: int, valid: Optional[jax.Array]) -> jax.Array:
    """f32[C, N] membership of every row in every label (0 for invalid rows)."""
    ok = jnp.ones(labels.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return ((labels[None, :] == jnp.arange(num_labels)[:, None]) & ok[None, :]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("num_labels", "centred"))
def spectral_scores(features: jax.Array, labels: jax.Array, num_labels: int,
                    valid: Optional[jax.Array] = None, centred: bool = True) -> jax.Array:
    """Spectral-signature outlier scores f32[N] (squared units of T, or units of T with
    ``centred=False``; 0 for invalid rows).

    Args:
      features: f[N, D] representations (the study's T).
      labels: int[N] training labels in [0, num_labels) (the poisoned labels: what a defender sees).
      num_labels: static number of labels.
      valid: optional bool[N]; False rows take no part and score 0.
      centred: the textbook score ((t_i - mean) . v)^2; False: BackdoorBench's |t_i . v|.
    """
    x = jnp.asarray(features, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    masks = _label_masks(labels, num_labels, valid)  # [C, N]
    counts = jnp.maximum(jnp.sum(masks, axis=1), 1.0)
    means = masks @ x / counts[:, None]  # [C, D]

    def top_direction(mask, mean):
        centred = (x - mean) * mask[:, None]
        cov = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST)
        _, vecs = jnp.linalg.eigh(cov)
        return vecs[:, -1]  # eigh sorts ascending: the last is the top singular direction

    dirs = jax.vmap(top_direction)(masks, means)  # [C, D]
    own = jnp.clip(labels, 0, num_labels - 1)
    ok = jnp.sum(masks, axis=0) > 0
    if not centred:
        return jnp.where(ok, jnp.abs(jnp.sum(x * dirs[own], axis=1)), 0.0)
    proj = jnp.sum((x - means[own]) * dirs[own], axis=1)
    return jnp.where(ok, proj**2, 0.0)


@functools.partial(jax.jit, static_argnames=("num_labels",))
def flag_top_per_label(scores: jax.Array, labels: jax.Array, num_labels: int, fraction: float,
                       valid: Optional[jax.Array] = None) -> jax.Array:
    """bool[N]: the ``floor(fraction * n_c)`` highest-scoring valid rows of each label c."""
    labels = jnp.asarray(labels, jnp.int32)
    masks = _label_masks(labels, num_labels, valid) > 0  # [C, N]
    s = jnp.asarray(scores, jnp.float32)

    def per_label(mask):
        # rank of each member among its label, highest score first (non-members last)
        order = jnp.argsort(jnp.where(mask, -s, jnp.inf), stable=True)
        rank = jnp.zeros(s.shape, jnp.int32).at[order].set(jnp.arange(s.shape[0], dtype=jnp.int32))
        keep = jnp.floor(fraction * jnp.sum(mask)).astype(jnp.int32)
        return mask & (rank < keep)

    return jnp.any(jax.vmap(per_label)(masks), axis=0)
