"""Metrics on a run's MI history and on its representations: stealthiness, silhouettes, 2-D embedding.

Everything here is a pure function. The array functions (:func:`minmax_normalise`,
:func:`stealth_distance`, :func:`silhouette_samples`, :func:`silhouette_score`, :func:`pca_2d`) take
and return ``jnp`` arrays and are jit-able (with the noted static arguments); the dict functions
(:func:`stealthiness`, :func:`group_silhouettes`, :func:`select_epochs`) read plain Python structures
as stored in a run's files and return plain Python floats.

Stealthiness (SPEC.md, "Where ibjax must do better")
----------------------------------------------------
For one MI quantity (I(X;T) or I(T;Y_pred), in nats), one target group (``target_clean`` or
``target``) and the selected epochs e_1..e_E, take the target group's values m_target(e) and every
clean class's values m_c(e), c = 1..C. These (C + 1) * E numbers are min-max normalised *jointly*:
one minimum and one maximum over all groups and all selected epochs together (the authors normalise
the concatenation of the target trajectory and the clean-class trajectories). Then

    D_e = | mean_c (m_target(e) - m_c(e)) |,        D = mean_e D_e,

so D lies in [0, 1], is 0 when the target follows the clean classes' mean exactly, and is unchanged
by any affine rescale a * x + b (a > 0) of the quantity's values. Each of the four (quantity, target
group) pairs is normalised on its own; the total is the sum of the four D's, in [0, 4]. Lower = the
backdoor blends in better (more stealthy). The metric is dimensionless (the nats cancel).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "QUANTITIES",
    "STEALTH_TARGET_GROUPS",
    "DEFAULT_STEALTH_EPOCHS",
    "minmax_normalise",
    "stealth_distance",
    "select_epochs",
    "clean_groups",
    "available_epochs",
    "stealthiness",
    "silhouette_samples",
    "silhouette_score",
    "cluster_ids",
    "group_silhouettes",
    "pca_2d",
]

QUANTITIES = ("xt", "ty")
"""MI quantities of a run's history: ``"xt"`` = I(X;T), ``"ty"`` = I(T;Y_pred), both in nats."""

STEALTH_TARGET_GROUPS = ("target_clean", "target")
"""Target groups whose trajectories the stealthiness metric compares with the clean classes'."""

DEFAULT_STEALTH_EPOCHS = (5, 40, 100)

_READS = ("heldout", "train")


# --------------------------------------------------------------------------------------------------
# Normalisation and the stealth distance


def minmax_normalise(x: jax.Array, axis: Optional[int | tuple[int, ...]] = None) -> jax.Array:
    """Min-max normalise ``x`` to [0, 1] along ``axis`` (all axes jointly when ``axis`` is None).

    Args:
      x: f32[...], any shape.
      axis: axis or axes over which the minimum and maximum are taken; None = over all elements.

    Returns:
      f32[same shape as x], (x - min) / (max - min). Where max == min (constant input) the result is
      0, never NaN.
    """
    x = jnp.asarray(x, dtype=jnp.result_type(x, jnp.float32))
    lo = jnp.min(x, axis=axis, keepdims=True)
    hi = jnp.max(x, axis=axis, keepdims=True)
    span = hi - lo
    safe = jnp.where(span > 0, span, 1.0)
    return jnp.where(span > 0, (x - lo) / safe, jnp.zeros_like(x))


@jax.jit
def stealth_distance(target: jax.Array, clean: jax.Array) -> jax.Array:
    """Dynamics-based stealth distance D of one target group for one MI quantity.

    The E + C * E values (target and all clean classes, all selected epochs) are min-max normalised
    jointly (one min and one max over all of them), then D_e = |mean_c (m_target(e) - m_c(e))| and
    D = mean_e D_e.

    Args:
      target: f32[E], the target group's MI (nats) at the E selected epochs.
      clean: f32[C, E], every clean class's MI (nats) at the same epochs.

    Returns:
      f32 scalar in [0, 1] (dimensionless). 0 = the target follows the clean classes' mean.
    """
    target = jnp.asarray(target, jnp.float32)
    clean = jnp.asarray(clean, jnp.float32)
    if target.ndim != 1 or clean.ndim != 2 or clean.shape[1] != target.shape[0]:
        raise ValueError(f"expected target f32[E] and clean f32[C, E], got {target.shape} and {clean.shape}")
    m = minmax_normalise(jnp.concatenate([target[None, :], clean], axis=0))
    d_e = jnp.abs(jnp.mean(m[0][None, :] - m[1:], axis=0))
    return jnp.mean(d_e)


# --------------------------------------------------------------------------------------------------
# Reading a run's MI history


def select_epochs(available: Iterable[int | str], wanted: Sequence[int]) -> list[int]:
    """Map each wanted epoch to the nearest available one (ties go to the earlier epoch).

    For callers running shorter experiments than the reference's 120 epochs, who choose explicitly to
    evaluate the metric at substitute epochs: ``stealthiness(mi, select_epochs(available_epochs(mi),
    (5, 40, 100)))``. Two wanted epochs that map to the same available one give it once: the metric
    averages over distinct epochs, never weighting one epoch twice.

    Args:
      available: epochs present in the history (ints or their string keys).
      wanted: epochs asked for.

    Returns:
      list[int], the distinct nearest epochs in the order of ``wanted`` (shorter than ``wanted`` when
      two collapse).
    """
    avail = sorted({int(a) for a in available})
    if not avail:
        raise ValueError("no available epochs to select from")
    nearest = [min(avail, key=lambda a: (abs(a - int(w)), a)) for w in wanted]
    return list(dict.fromkeys(nearest))


def clean_groups(mi: Mapping[str, Any], quantity: str = "xt") -> list[str]:
    """Names of the clean-class groups (keys starting with ``"class_"``) of one quantity, sorted by
    class index where the suffix is an integer."""
    names = [g for g in mi[quantity] if g.startswith("class_")]

    def order(name: str):
        suffix = name[len("class_"):]
        return (0, int(suffix), "") if suffix.isdigit() else (1, 0, suffix)

    return sorted(names, key=order)


def available_epochs(mi: Mapping[str, Any], quantities: Sequence[str] = QUANTITIES,
                     groups: Optional[Sequence[str]] = None) -> list[int]:
    """Epochs present for every given group (default: the stealth target groups and all clean
    classes) in every given quantity of the history, sorted."""
    common: Optional[set[int]] = None
    for q in quantities:
        if q not in mi:
            raise ValueError(f"MI history has no quantity {q!r} (has {sorted(mi)})")
        names = list(groups) if groups is not None else [*STEALTH_TARGET_GROUPS, *clean_groups(mi, q)]
        for g in names:
            if g not in mi[q]:
                raise ValueError(f"MI history {q!r} has no group {g!r} (has {sorted(mi[q])})")
            epochs = {int(e) for e in mi[q][g]}
            common = epochs if common is None else common & epochs
    return sorted(common or ())


def _value(entry: Any, read: str, where: str) -> float:
    value = entry[read] if isinstance(entry, Mapping) else None
    if value is None or not math.isfinite(float(value)):
        hint = ' (try read="train")' if read == "heldout" else ""
        raise ValueError(f"MI history has no finite {read!r} value at {where}: {value!r}{hint}")
    return float(value)


def _series(mi: Mapping[str, Any], quantity: str, group: str, epochs: Sequence[int], read: str) -> np.ndarray:
    hist = mi[quantity][group]
    return np.array([_value(hist[str(e)], read, f"{quantity}/{group}/epoch {e}") for e in epochs], np.float32)


def stealthiness(mi: Mapping[str, Any], epochs: Sequence[int] = DEFAULT_STEALTH_EPOCHS,
                 read: str = "heldout", *, clean: Optional[Sequence[str]] = None) -> dict:
    """The dynamics-based stealthiness metric of one run (lower = more stealthy).

    Args:
      mi: the run's MI history, ``mi[quantity][group][str(epoch)] = {"train": float, "heldout":
        float, "trajectory": [...]}`` with quantity in ("xt", "ty") (I(X;T), I(T;Y_pred), nats) and
        groups "target", "target_clean", ... and the clean classes "class_<k>" (every key starting
        with "class_" is a clean class).
      epochs: the selected epochs; every one must be present for both target groups and every clean
        class of both quantities (use :func:`select_epochs` to substitute nearest epochs explicitly).
      read: which estimate to use, "heldout" (ibjax's default) or "train" (the reference's read).
      clean: optional subset of clean-class group names to compare with (e.g. the reference's three
        tracked classes); default every "class_*" group.

    Returns:
      ``{"components": {"xt/target_clean": D, "xt/target": D, "ty/target_clean": D, "ty/target": D},
      "total": sum of the four, "epochs": [...], "read": read}``; every D is a Python float in [0, 1]
      computed by :func:`stealth_distance` (joint min-max over the target group, all clean classes and
      all selected epochs of that quantity).

    Raises:
      ValueError: an epoch is missing (the message names the missing and the available ones), a
        quantity or group is missing, there are no clean classes, or a value is None/NaN.
    """
    if read not in _READS:
        raise ValueError(f"read must be one of {_READS}, got {read!r}")
    epochs = [int(e) for e in epochs]
    if not epochs:
        raise ValueError("no epochs selected")
    components: dict[str, float] = {}
    for q in QUANTITIES:
        if q not in mi:
            raise ValueError(f"MI history has no quantity {q!r} (has {sorted(mi)})")
        cleans = list(clean) if clean is not None else clean_groups(mi, q)
        if not cleans:
            raise ValueError(f"MI history {q!r} has no clean classes (keys starting with 'class_')")
        avail = available_epochs(mi, (q,), [*STEALTH_TARGET_GROUPS, *cleans])
        missing = sorted(set(epochs) - set(avail))
        if missing:
            raise ValueError(
                f"epochs {missing} missing from the {q!r} MI history; available (for all of "
                f"{list(STEALTH_TARGET_GROUPS)} and the clean classes): {avail}. "
                "Use select_epochs(available, wanted) to substitute the nearest ones explicitly."
            )
        clean_values = np.stack([_series(mi, q, c, epochs, read) for c in cleans])
        for g in STEALTH_TARGET_GROUPS:
            target = _series(mi, q, g, epochs, read)
            components[f"{q}/{g}"] = float(stealth_distance(target, clean_values))
    return {"components": components, "total": float(sum(components.values())), "epochs": epochs, "read": read}


# --------------------------------------------------------------------------------------------------
# Silhouette


def _pairwise_block(xb: jax.Array, x: jax.Array, sq_b: jax.Array, sq: jax.Array) -> jax.Array:
    """Euclidean distances f32[B, N] between rows xb f32[B, D] and x f32[N, D]."""
    cross = jnp.matmul(xb, x.T, precision=jax.lax.Precision.HIGHEST)
    d2 = sq_b[:, None] + sq[None, :] - 2.0 * cross
    return jnp.sqrt(jnp.maximum(d2, 0.0))


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
      valid: optional bool[N]; False rows (padding) are in no cluster and get 0.
      block_size: static number of rows per distance block.

    Returns:
      f32[N] silhouette coefficients in [-1, 1].
    """
    x = jnp.asarray(x, jnp.float32)
    n = x.shape[0]
    labels = jnp.asarray(labels, jnp.int32)
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    valid = valid & (labels >= 0) & (labels < num_labels)
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
    """Mean silhouette coefficient over the valid samples (see :func:`silhouette_samples`).

    Args: as :func:`silhouette_samples`.

    Returns:
      f32 scalar in [-1, 1]; 0 if there is no valid sample.
    """
    n = x.shape[0]
    valid_ = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    s = silhouette_samples(x, labels, num_labels, valid, block_size)
    return jnp.sum(jnp.where(valid_, s, 0.0)) / jnp.maximum(jnp.sum(valid_), 1)


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
