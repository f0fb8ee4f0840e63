"""Activation clustering (Chen et al., 2018): per label, poisoned samples form their own, smaller
cluster of representations.

Per training label: centre the label's representations, project them on their top ``dims``
principal axes, split them into two clusters with k-means, and call the smaller one suspicious. The
reference (BackdoorBench's detection code) reduces with FastICA with unit-variance whitening and
flags the smaller cluster where it holds less than 35% of its label. FastICA's output is the
whitened PCA projection turned by an orthogonal unmixing matrix, and Euclidean k-means does not see
rotations, so ``whiten=True`` (the reference) clusters the whitened PCA projection: the same
clusters up to k-means' random start, without FastICA's iterations. ibjax's default does not
whiten: whitening scales the direction along which a cluster holding a share p of its label lies
to unit variance, which caps that cluster's separation at 1 / sqrt(p (1 - p)) standard deviations
(2.5 for p = 0.2) however far it lies, level with every noise direction kept (tested: a planted
20% cluster 6 units away along one of 24 dimensions is found by the whitened clustering under 2 of
4 keys, 10 restarts each, and by the plain projection under all 4, AUROC 1.0).

k-means (k = 2, k-means++ starts, restarts, Lloyd iterations) runs per label with the other
labels' rows weighted out.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

__all__ = ["principal_projection", "activation_clusters"]


def principal_projection(x: jax.Array, weight: jax.Array, dims: int, whiten: bool = False) -> jax.Array:
    """The rows of x f[N, D] centred on their weighted mean and projected on the top ``dims``
    principal axes of the weighted rows (each scaled to unit variance if ``whiten``): f32[N, dims].

    ``weight`` f[N] (0/1 membership) says which rows define the mean and the axes.
    """
    w = jnp.asarray(weight, jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = w @ x / n
    c = (x - mean) * w[:, None]
    cov = jnp.matmul(c.T, c, precision=jax.lax.Precision.HIGHEST) / jnp.maximum(n - 1.0, 1.0)
    vals, vecs = jnp.linalg.eigh(cov)
    vals, vecs = vals[::-1][:dims], vecs[:, ::-1][:, :dims]
    # Directions of (near) zero variance stay 0 instead of being blown up to unit variance.
    scale = jnp.where(vals > 1e-6 * jnp.maximum(vals[0], 1e-30), jax.lax.rsqrt(jnp.maximum(vals, 1e-30)), 0.0)
    z = jnp.matmul(x - mean, vecs, precision=jax.lax.Precision.HIGHEST)
    return z * scale if whiten else z


_TRIALS = 3


def _two_means(key: jax.Array, z: jax.Array, member: jax.Array, restarts: int, iterations: int = 50) -> jax.Array:
    """int32[N] cluster (0/1) of every row: weighted k-means (k = 2) on the member rows only.

    k-means++ starts drawn with the members' weights, ``iterations`` Lloyd steps, and the start of
    least inertia among ``restarts``. Written here rather than taken from ott-jax: its k-means++
    start ignores the point weights, so rows weighted out (the other labels) would pick the starts.
    """
    w = member.astype(jnp.float32)

    def d2(c):  # [N, 2] squared distances to the two centres
        return jnp.sum((z[:, None, :] - c[None]) ** 2, axis=-1)

    def run(k):
        k1, k2 = jax.random.split(k)
        first = z[jax.random.categorical(k1, jnp.log(jnp.maximum(w, 1e-30)))]
        far = w * jnp.sum((z - first) ** 2, axis=-1)
        # greedy k-means++ (as scikit-learn's): of a few draws, the second centre that lowers the
        # inertia most
        cand = z[jax.random.categorical(k2, jnp.log(jnp.maximum(far, 1e-30)), shape=(_TRIALS,))]
        pot = jnp.sum(jnp.minimum(far[None], w * jnp.sum((z[None] - cand[:, None]) ** 2, axis=-1)), axis=1)
        second = cand[jnp.argmin(pot)]

        def lloyd(c, _):
            assign = jnp.argmin(d2(c), axis=1)
            one = jax.nn.one_hot(assign, 2) * w[:, None]  # [N, 2]
            counts = jnp.sum(one, axis=0)
            new = one.T @ z / jnp.maximum(counts, 1.0)[:, None]
            return jnp.where(counts[:, None] > 0, new, c), None

        c, _ = jax.lax.scan(lloyd, jnp.stack([first, second]), None, length=iterations)
        dist = d2(c)
        return jnp.argmin(dist, axis=1).astype(jnp.int32), jnp.sum(w * jnp.min(dist, axis=1))

    assign, inertia = jax.vmap(run)(jax.random.split(key, restarts))
    return assign[jnp.argmin(inertia)]


@functools.partial(jax.jit, static_argnames=("num_labels", "dims", "restarts", "whiten"))
def activation_clusters(key: jax.Array, features: jax.Array, labels: jax.Array, num_labels: int, *,
                          dims: int = 10, restarts: int = 10, size_threshold: float = 0.35, whiten: bool = False,
                          valid: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Activation-clustering scores and flags of every row: ``(scores f32[N], flags bool[N])``.

    Args:
      key: PRNG key (k-means starts; one per label).
      features: f[N, D] representations (the study's T).
      labels: int[N] training labels in [0, num_labels).
      num_labels: static number of labels.
      dims: principal dimensions kept (BackdoorBench: 10).
      restarts: k-means++ restarts per label (the best of them is kept).
      size_threshold: a label's smaller cluster is flagged where it holds less than this share of
        the label (BackdoorBench: 0.35).
      whiten: scale the principal dimensions to unit variance (the reference's FastICA; see above).
      valid: optional bool[N]; False rows score 0 and are never flagged.

    Returns:
      scores: 1 minus the share of its label that a row's cluster holds (rows of a small cluster
        score high; a label split evenly scores 0.5 throughout), comparable across labels.
      flags: rows of a smaller cluster whose share is below ``size_threshold``.
    """
    x = jnp.asarray(features, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    ok = jnp.ones(labels.shape, bool) if valid is None else jnp.asarray(valid, bool)
    members = (labels[None, :] == jnp.arange(num_labels)[:, None]) & ok[None, :]  # [C, N]

    def per_label(k, member):
        z = principal_projection(x, member, min(dims, x.shape[1]), whiten)
        cluster = _two_means(k, z, member, restarts)
        n = jnp.maximum(jnp.sum(member), 1)
        size1 = jnp.sum(member & (cluster == 1))
        share = jnp.where(cluster == 1, size1, n - size1) / n
        small = share < 0.5
        return jnp.where(member, 1.0 - share, 0.0), member & small & (share < size_threshold)

    scores, flags = jax.vmap(per_label)(jax.random.split(key, num_labels), members)
    return jnp.sum(scores, axis=0), jnp.any(flags, axis=0)
