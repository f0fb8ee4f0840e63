"""Clustering of representations: silhouette scores (per sample, per group) and a 2-D PCA embedding.

Pure functions of arrays, usable under jit and vmap (with the noted static arguments); distances are
Euclidean in the units of the representation T.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["silhouette_samples", "silhouette_score", "cluster_ids", "group_silhouettes", "pca_2d", "tsne_2d",
           "EMBEDDINGS", "embed_2d", "check_embedding"]


def _pairwise_block(xb: jax.Array, x: jax.Array, sq_b: jax.Array, sq: jax.Array) -> jax.Array:
    """Euclidean distances f32[B, N] between rows xb f32[B, D] and x f32[N, D]."""
    cross = jnp.matmul(xb, x.T, precision=jax.lax.Precision.HIGHEST)
    d2 = sq_b[:, None] + sq[None, :] - 2.0 * cross
    return jnp.sqrt(jnp.maximum(d2, 0.0))


def _valid_mask(labels: jax.Array, num_labels: int, valid: Optional[jax.Array]) -> jax.Array:
    """bool[N]: the samples that belong to a cluster (``valid``, default all, and a label in range)."""
    mask = jnp.ones(labels.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return mask & (labels >= 0) & (labels < num_labels)


@functools.partial(jax.jit, static_argnames=("num_labels", "block_size"))
def silhouette_samples(x: jax.Array, labels: jax.Array, num_labels: int, valid: Optional[jax.Array] = None,
                       block_size: int = 1024) -> jax.Array:
    """Silhouette coefficient of every sample, Euclidean distance.

    For sample i in cluster k: a_i = mean distance to the other members of k, b_i = min over the other
    non-empty clusters l of the mean distance to l's members, s_i = (b_i - a_i) / max(a_i, b_i).
    s_i = 0 for members of singleton clusters, when no other cluster is non-empty, and for invalid
    (padding) samples. Matches the standard (scikit-learn) definition.

    Distances are computed in blocks of ``block_size`` rows (``lax.map``), so memory is
    O(block_size * N) rather than O(N^2): N = 10,000 never builds a 10k x 10k matrix.

    Args:
      x: f32[N, D] points (e.g. representations T).
      labels: int[N] cluster ids in [0, num_labels).
      num_labels: static number of cluster ids.
      valid: optional bool[N]; False rows (padding) are in no cluster and get 0. Rows whose label lies
        outside [0, num_labels) are invalid too.
      block_size: static number of rows per distance block.

    Returns:
      f32[N] silhouette coefficients in [-1, 1].
    """
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    labels = jnp.asarray(labels, jnp.int32)
    valid = _valid_mask(labels, num_labels, valid)
    x = x - jnp.sum(jnp.where(valid[:, None], x, 0.0), 0) / jnp.maximum(jnp.sum(valid), 1)  # centring: less cancellation
    onehot = jax.nn.one_hot(labels, num_labels, dtype=jnp.float32) * valid[:, None]  # [N, L]
    counts = jnp.sum(onehot, axis=0)  # [L]
    sq = jnp.sum(x * x, axis=1)

    bs = min(block_size, n)
    nb = -(-n // bs)
    pad = nb * bs - n
    rows = jnp.arange(nb * bs).reshape(nb, bs)
    xp = jnp.pad(x, ((0, pad), (0, 0))).reshape(nb, bs, -1)
    sqp = jnp.pad(sq, (0, pad)).reshape(nb, bs)

    def block(args):
        xb, sqb, rb = args
        d = _pairwise_block(xb, x, sqb, sq)
        d = jnp.where(rb[:, None] == jnp.arange(n)[None, :], 0.0, d)  # exact zero self-distance
        return jnp.matmul(d, onehot, precision=jax.lax.Precision.HIGHEST)  # [B, L] sums per cluster

    sums = jax.lax.map(block, (xp, sqp, rows)).reshape(nb * bs, num_labels)[:n]  # [N, L]

    own = jax.nn.one_hot(labels, num_labels, dtype=bool) & valid[:, None]
    own_count = jnp.sum(jnp.where(own, counts[None, :], 0.0), axis=1)
    a = jnp.sum(jnp.where(own, sums, 0.0), axis=1) / jnp.maximum(own_count - 1.0, 1.0)
    other = (~own) & (counts[None, :] > 0)
    mean_other = jnp.where(other, sums / jnp.maximum(counts[None, :], 1.0), jnp.inf)
    b = jnp.min(mean_other, axis=1)
    ok = valid & (own_count > 1) & jnp.isfinite(b)
    denom = jnp.maximum(a, b)
    s = jnp.where(ok & (denom > 0), (b - a) / jnp.where(denom > 0, denom, 1.0), 0.0)
    return jnp.where(ok, s, 0.0)


@functools.partial(jax.jit, static_argnames=("num_labels", "block_size"))
def silhouette_score(x: jax.Array, labels: jax.Array, num_labels: int, valid: Optional[jax.Array] = None,
                     block_size: int = 1024) -> jax.Array:
    """Mean silhouette coefficient over the valid samples (see :func:`silhouette_samples`): those with
    ``valid`` True and a label in [0, num_labels), the same mask the per-sample scores use.

    Args: as :func:`silhouette_samples`.

    Returns:
      f32 scalar in [-1, 1]; 0 if there is no valid sample.
    """
    mask = _valid_mask(jnp.asarray(labels, jnp.int32), num_labels, valid)
    s = silhouette_samples(x, labels, num_labels, valid, block_size)
    return jnp.sum(jnp.where(mask, s, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def cluster_ids(labels: jax.Array, poisoned: jax.Array, target: int, num_classes: int) -> jax.Array:
    """Cluster ids for :func:`group_silhouettes`: the training label, except target-class backdoor
    samples (``poisoned & labels == target``), which get their own id ``num_classes``.

    Args:
      labels: int[N] training labels (after poisoning).
      poisoned: bool[N] backdoor flags.
      target: the target class.
      num_classes: number of classes K.

    Returns:
      int32[N] ids in [0, K] (K + 1 clusters).
    """
    labels = jnp.asarray(labels, jnp.int32)
    backdoor = jnp.asarray(poisoned, bool) & (labels == target)
    return jnp.where(backdoor, num_classes, labels)


def group_silhouettes(t: jax.Array, labels: jax.Array, poisoned: jax.Array, target: int,
                      num_classes: Optional[int] = None, block_size: int = 1024) -> dict[str, float]:
    """Per-group silhouette scores of the representation T, the target class split in two.

    Clusters are the training labels, with the target class's backdoor samples (poisoned and labelled
    ``target``) a cluster of their own (see :func:`cluster_ids`). Poisoned samples whose label is not
    the target (e.g. Adaptive-Blend's regularisation samples) stay in their class.

    Args:
      t: f32[N, D] representations.
      labels: int[N] training labels.
      poisoned: bool[N] backdoor flags.
      target: the target class c.
      num_classes: K; default max(labels) + 1 (and at least target + 1).
      block_size: rows per distance block.

    Returns:
      dict of Python floats: ``"target_clean"``, ``"target_backdoor"``, ``"target"`` (the two
      together) and ``"class_<k>"`` for every other class k: the mean silhouette of that group's
      samples (NaN for an empty group); ``"overall"``: the mean over all samples.
    """
    labels_np = np.asarray(labels).astype(np.int32)
    if num_classes is None:
        num_classes = int(max(labels_np.max(initial=-1) + 1, target + 1))
    if labels_np.size and (labels_np.min() < 0 or labels_np.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels_np.min()}, {labels_np.max()}]")
    if not 0 <= target < num_classes:
        raise ValueError(f"target {target} outside [0, {num_classes})")
    ids = np.asarray(cluster_ids(labels_np, np.asarray(poisoned), target, num_classes))
    s = np.asarray(silhouette_samples(jnp.asarray(t, jnp.float32), ids, num_classes + 1, block_size=block_size))

    def mean(mask: np.ndarray) -> float:
        return float(s[mask].mean()) if mask.any() else float("nan")

    out = {
        "target_clean": mean(ids == target),
        "target_backdoor": mean(ids == num_classes),
        "target": mean(labels_np == target),
    }
    for k in range(num_classes):
        if k != target:
            out[f"class_{k}"] = mean(ids == k)
    out["overall"] = float(s.mean()) if s.size else float("nan")
    return out


# --------------------------------------------------------------------------------------------------
# 2-D embedding


@jax.jit
def pca_2d(x: jax.Array) -> jax.Array:
    """Project onto the top two principal directions.

    The rows are centred; the directions are the top-2 eigenvectors of the D x D covariance
    (``eigh``, when D <= N) or the top-2 right singular vectors of the centred data (SVD, when
    D > N). Each direction's sign is fixed so that its largest-magnitude entry is positive, so the
    result is deterministic. With D < 2 the missing coordinate is 0.

    Args:
      x: f32[N, D].

    Returns:
      f32[N, 2], coordinates in the units of x; column 0 has the larger variance.
    """
    x = jnp.asarray(x, jnp.float32)
    n, d = x.shape
    xc = x - jnp.mean(x, axis=0, keepdims=True)
    if d <= n:
        cov = jnp.matmul(xc.T, xc, precision=jax.lax.Precision.HIGHEST) / max(n - 1, 1)
        _, vecs = jnp.linalg.eigh(cov)  # ascending eigenvalues
        dirs = vecs[:, ::-1][:, : min(2, d)]  # [D, k]
    else:
        _, _, vt = jnp.linalg.svd(xc, full_matrices=False)
        dirs = vt[: min(2, d)].T
    idx = jnp.argmax(jnp.abs(dirs), axis=0)
    sign = jnp.sign(dirs[idx, jnp.arange(dirs.shape[1])])
    dirs = dirs * jnp.where(sign == 0, 1.0, sign)[None, :]
    proj = jnp.matmul(xc, dirs, precision=jax.lax.Precision.HIGHEST)
    if proj.shape[1] < 2:
        proj = jnp.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    return proj


def tsne_2d(x, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """t-SNE to two dimensions, as the authors draw T: scikit-learn's ``TSNE`` (PCA initialisation,
    automatic learning rate, ``perplexity`` capped below N / 3), an optional extra
    (``pip install scikit-learn``). Not a JAX function: t-SNE's neighbour search and gradient loop are
    scikit-learn's, a well-kept implementation we use rather than write.

    Args:
      x: f32[N, D], N >= 4.
      seed: the embedding's random state.
      perplexity: the effective neighbourhood size.

    Returns:
      f32[N, 2] (t-SNE's coordinates have no units).
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("t-SNE embeddings need scikit-learn: pip install scikit-learn (or use method 'pca')") from e
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[0] < 4:
        raise ValueError(f"tsne_2d needs f32[N, D] with N >= 4, got shape {x.shape}")
    p = min(float(perplexity), (x.shape[0] - 1) / 3.0)
    return TSNE(n_components=2, perplexity=p, init="pca", learning_rate="auto",
                random_state=int(seed)).fit_transform(x).astype(np.float32)


EMBEDDINGS = {"pca": "PCA", "tsne": "t-SNE"}
"""The 2-D embeddings of T, by name, with the label their plots carry."""


def check_embedding(method: str) -> None:
    """ValueError for an unknown method, ImportError for t-SNE without scikit-learn (before any run)."""
    if method not in EMBEDDINGS:
        raise ValueError(f"unknown embedding method {method!r}; methods: {', '.join(EMBEDDINGS)}")
    if method == "tsne":
        try:
            import sklearn.manifold  # noqa: F401
        except ImportError as e:
            raise ImportError("embedding method 'tsne' needs scikit-learn: pip install scikit-learn, "
                              "or set analysis.embedding.method pca") from e


def embed_2d(x, method: str = "pca", seed: int = 0) -> np.ndarray:
    """f32[N, 2] embedding of f32[N, D] by ``method`` (:data:`EMBEDDINGS`)."""
    check_embedding(method)
    return np.asarray(pca_2d(jnp.asarray(x))) if method == "pca" else tsne_2d(x, seed)
