"""The MI-dynamics monitor: a model-level backdoor detector from the per-class MI trajectories alone.

A defender who estimates I(X;T) and I(T;Y_pred) for the training samples of every class, on groups of
one size, sees one curve per class and quantity and nothing about poisons. An all-to-one backdoor
puts samples of every class, with a trigger, into one class; that class's information flow then
departs from the others'. The monitor scores, at every measured epoch, how far the most deviant class
sits from the rest, and names it as the suspected target:

1. per quantity q, epoch e and class k, the class's deviation from the OTHER classes (leave-one-out,
   so that the deviant does not widen the spread it is measured against): ``"z"`` (mean and standard
   deviation of the others) or ``"robust"`` (median and 1.4826 x median absolute deviation); or,
   given clean networks, its departure in units of their scatter (``"clean"``, below);
2. accumulated over the epochs read so far (``accumulate``): ``"rms"``, the root mean square of the
   per-epoch deviations over quantities and epochs <= e (a persistent departure adds up while
   estimator noise averages out), ``"mean"``, the deviation of the class's running-mean values, or
   ``"last"``, epoch e alone;
3. the model's score at e is the largest class deviation, its argmax the suspected target.

Some classes differ from the others in every network (on MNIST the digit 1's I(T;Y_pred) is far
lower); a ``baseline`` of per-class values, the mean history of clean networks the defender trained
itself, is subtracted first, so that only departures from what clean training does count. With such
networks the defender knows more than their mean: how far clean training itself scatters each read.
The statistic ``"clean"`` measures a class's departure in that unit (:func:`clean_baseline`): the
residual from the clean mean, less the network's shift common to all its classes (the median over
classes: a seed moves every class's MI together, which is no class's departure), over the clean
networks' spread of the same residual, pooled over classes. The other classes' spread, which
``"z"`` divides by, mixes the classes' own differences with the noise.

Pure functions of arrays (nats in, unitless deviations out), usable under jit and vmap over a member
axis; :func:`defender_view` turns a study's MI history into the array, and :func:`auroc_by_epoch` /
:func:`detection_latency` read a population's scores epoch by epoch.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ibjax.defenses.roc import auroc
from ibjax.records import as_mi_histories

__all__ = ["MonitorResult", "CleanBaseline", "class_deviation", "clean_baseline", "monitor_scores", "defender_view",
           "auroc_by_epoch", "detection_latency", "STATISTICS", "ACCUMULATIONS", "DEFENDER_TARGET_GROUP"]

STATISTICS = ("z", "robust", "clean")
"""Per-epoch deviations: against the other classes (``"z"``, ``"robust"``: :func:`class_deviation`) or
in units of clean training's own scatter (``"clean"``: needs a :class:`CleanBaseline`)."""
ACCUMULATIONS = ("rms", "mean", "last")

DEFENDER_TARGET_GROUP = "target_sample"
"""The study's group that stands for the target class in the defender's view: a random subsample of
every sample labelled with the target, as large as a clean class (:mod:`ibjax.poison`), which is what a
defender who sizes every class's group alike measures. The group ``target`` (all of them) is larger
under dirty-label poisoning, and a size difference is not what the monitor should read."""

_MAD_TO_STD = 1.4826  # MAD of a normal sample x this = its standard deviation
_FLOOR = 1e-6  # nats: a spread below this is treated as this (identical classes)


@struct.dataclass
class MonitorResult:
    """The monitor's reads over a history's E epochs.

    Attributes:
      score: f32[E], the largest class deviation using the epochs up to each one.
      target: int32[E], the class with that deviation (the suspected target).
      deviation: f32[K, E], every class's accumulated deviation.
    """

    score: jax.Array
    target: jax.Array
    deviation: jax.Array


@struct.dataclass
class CleanBaseline:
    """What clean training gives, fitted by :func:`clean_baseline` to clean networks' histories.

    Attributes:
      mean: f32[Q, K, E], the per-class mean history (nats).
      scale: f32[Q, E], the clean networks' standard deviation of the monitor's residual (nats),
        pooled over classes.
      accumulate: the accumulation the residuals were taken with (the scale holds for it alone).
    """

    mean: jax.Array
    scale: jax.Array
    accumulate: str = struct.field(pytree_node=False, default="mean")


def _residuals(h: jax.Array, mean: jax.Array, accumulate: str) -> jax.Array:
    """f[..., Q, K, E]: the departure from the clean mean (its running mean for ``"mean"``), less the
    network's shift common to its classes (the median over classes)."""
    r = h - mean
    if accumulate == "mean":
        r = _running_mean(r)
    return r - jnp.nanmedian(r, axis=-2, keepdims=True)


def _check_accumulate(accumulate: str) -> None:
    if accumulate not in ACCUMULATIONS:
        raise ValueError(f"accumulate must be one of {ACCUMULATIONS}, got {accumulate!r}")


@functools.partial(jax.jit, static_argnames=("accumulate",))
def clean_baseline(clean: jax.Array, accumulate: str = "mean") -> CleanBaseline:
    """The :class:`CleanBaseline` of N clean networks' histories ``clean f[N, Q, K, E]`` (nats, N >= 2;
    NaN reads left out): their per-class mean, and the sample standard deviation (ddof 1) over the N
    networks of each one's residual (:data:`STATISTICS` ``"clean"``), its variance averaged over the
    classes."""
    _check_accumulate(accumulate)
    c = jnp.asarray(clean, jnp.float32)
    if c.ndim != 4 or c.shape[0] < 2:
        raise ValueError(f"clean histories must be f[N, Q, K, E] with N >= 2 networks, got shape {c.shape}")
    mean = jnp.nanmean(c, axis=0)
    var = jnp.nanvar(_residuals(c, mean, accumulate), axis=0, ddof=1)  # [Q, K, E]
    return CleanBaseline(mean=mean, scale=jnp.sqrt(jnp.nanmean(var, axis=1)), accumulate=accumulate)


def class_deviation(values: jax.Array, statistic: str = "z") -> jax.Array:
    """Each class's deviation from the other classes: f32[..., K] for values f[..., K] (classes on
    the last axis; NaN entries are left out of the others' statistics and read NaN themselves).

    ``"z"``: (v_k - mean of the others) / their standard deviation (ddof 1); ``"robust"``: (v_k -
    median of the others) / (1.4826 x their median absolute deviation). Spreads are floored at 1e-6.
    """
    if statistic not in ("z", "robust"):
        raise ValueError(f"statistic must be 'z' or 'robust' (against the other classes), got {statistic!r}")
    v = jnp.asarray(values, jnp.float32)
    k = v.shape[-1]
    if k < 3:
        raise ValueError(f"the monitor compares each class with the others: it needs >= 3 classes, got {k}")
    others = jnp.where(jnp.eye(k, dtype=bool), jnp.nan, v[..., None, :])  # [..., K (class), K (others)]
    if statistic == "z":
        centre = jnp.nanmean(others, axis=-1)
        spread = jnp.nanstd(others, axis=-1, ddof=1)
    else:
        centre = jnp.nanmedian(others, axis=-1)
        spread = _MAD_TO_STD * jnp.nanmedian(jnp.abs(others - centre[..., None]), axis=-1)
    return (v - centre) / jnp.maximum(spread, _FLOOR)


def _running_mean(x: jax.Array) -> jax.Array:
    """NaN-aware mean over the last axis of every prefix: f[..., E]."""
    ok = jnp.isfinite(x)
    total = jnp.cumsum(jnp.where(ok, x, 0.0), axis=-1)
    count = jnp.cumsum(ok, axis=-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


@functools.partial(jax.jit, static_argnames=("statistic", "accumulate"))
def monitor_scores(history: jax.Array, baseline: Union[jax.Array, CleanBaseline, None] = None, *,
                   statistic: str = "z", accumulate: str = "mean") -> MonitorResult:
    """The monitor's score and suspected target at every epoch of one network's history.

    Args:
      history: f[Q, K, E] per quantity (e.g. I(X;T), I(T;Y_pred)), class and measured epoch, nats
        (the defender's view: :func:`defender_view`); NaN where a read is missing.
      baseline: optional: the per-class values clean training gives, f[Q, K, E] (the mean history of
        the defender's own clean networks) or a :class:`CleanBaseline` (that mean and the clean
        networks' scatter), its mean subtracted before the deviations.
      statistic: the per-epoch deviation, one of :data:`STATISTICS` (``"clean"`` needs a
        :class:`CleanBaseline` fitted with this ``accumulate``).
      accumulate: how the epochs read so far combine (module docstring): ``"rms"``, ``"mean"`` or
        ``"last"``.

    Returns:
      :class:`MonitorResult`: at epoch index e the score uses epochs 0..e only (what an online
      monitor knows then).
    """
    _check_accumulate(accumulate)
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    h = jnp.asarray(history, jnp.float32)
    if h.ndim != 3:
        raise ValueError(f"history must be f[Q, K, E] (quantities, classes, epochs), got shape {h.shape}")
    if statistic == "clean":
        if not isinstance(baseline, CleanBaseline) or baseline.accumulate != accumulate:
            raise ValueError(f"statistic 'clean' needs a CleanBaseline fitted with accumulate={accumulate!r}: "
                             "clean_baseline(clean_histories, accumulate)")
        z = _residuals(h, baseline.mean, accumulate) / jnp.maximum(baseline.scale[:, None, :], _FLOOR)
        sq = jnp.nanmean(jnp.square(z), axis=0)  # [K, E]
        dev = jnp.sqrt(_running_mean(sq) if accumulate == "rms" else sq)
        return _result(dev)
    if baseline is not None:
        h = h - jnp.asarray(baseline.mean if isinstance(baseline, CleanBaseline) else baseline, jnp.float32)
    if accumulate == "mean":
        z = class_deviation(jnp.moveaxis(_running_mean(h), 1, -1), statistic)  # [Q, E, K]
        dev = jnp.sqrt(jnp.nanmean(jnp.square(z), axis=0)).T  # RMS over quantities: [K, E]
    else:
        z = jnp.moveaxis(class_deviation(jnp.moveaxis(h, 1, -1), statistic), -1, 1)  # [Q, K, E]
        sq = jnp.nanmean(jnp.square(z), axis=0)  # [K, E]
        dev = jnp.sqrt(_running_mean(sq) if accumulate == "rms" else sq)
    return _result(dev)


def _result(dev: jax.Array) -> MonitorResult:
    filled = jnp.where(jnp.isfinite(dev), dev, -jnp.inf)
    return MonitorResult(score=jnp.max(filled, axis=0), target=jnp.argmax(filled, axis=0).astype(jnp.int32),
                         deviation=dev)


def defender_view(mi: Mapping[str, Any], target: int, num_classes: int, *, quantities: Sequence[str] = ("xt", "ty"),
                  read: str = "heldout", epochs: Optional[Sequence[int]] = None) -> tuple[np.ndarray, tuple[int, ...]]:
    """The per-class history a defender would measure, from a study's MI history.

    Class k != target reads group ``class_k``, the target class reads :data:`DEFENDER_TARGET_GROUP`;
    every group then holds about one clean class's number of samples labelled k.

    Args:
      mi: ``{quantity: MIHistory}`` or mi.json's layout; online reads are the quantities
        ``"xt_online"`` / ``"ty_online"`` (read ``"heldout"``).
      target: the run's poison target (the group naming's, not the defender's knowledge).
      epochs: the epochs to read (default: those every quantity holds for every class).

    Returns:
      ``(values f64[Q, K, E] nats, NaN where absent, epochs)``.
    """
    hist = as_mi_histories({q: mi[q] for q in quantities if q in mi})
    missing = [q for q in quantities if q not in hist]
    if missing:
        raise ValueError(f"MI history has no quantity {missing[0]!r} (has {sorted(mi)}): estimate it, or choose "
                         "other quantities")
    groups = [DEFENDER_TARGET_GROUP if k == target else f"class_{k}" for k in range(num_classes)]
    for q in quantities:
        absent = [g for g in groups if g not in hist[q].groups]
        if absent:
            raise ValueError(f"MI history {q!r} has no group {absent[0]!r}: the monitor needs every class's group")
    if epochs is None:
        common = set(hist[quantities[0]].epochs)
        for q in quantities:
            for g in groups:
                common &= set(hist[q].epochs_of(g, read))
        epochs = sorted(common)
    epochs = tuple(int(e) for e in epochs)
    values = np.stack([hist[q].values(read, groups, epochs) for q in quantities])
    return values, epochs


@jax.jit
def auroc_by_epoch(scores: jax.Array, positive: jax.Array) -> jax.Array:
    """AUROC f32[E] of model scores f[M, E] (M models, E epochs) for ``positive`` bool[M]
    (backdoored), epoch by epoch."""
    return jax.vmap(auroc, in_axes=(1, None))(jnp.asarray(scores, jnp.float32), jnp.asarray(positive, bool))


def detection_latency(aurocs: Sequence[float], epochs: Sequence[int], level: float = 0.9) -> Optional[int]:
    """The first epoch at which the AUROC reaches ``level`` and stays there for every later epoch read
    (None if it never does): how early the monitor separates the population."""
    a = np.asarray(aurocs, float)
    ok = np.isfinite(a) & (a >= level)
    for i in range(len(a)):
        if ok[i:].all():
            return int(epochs[i])
    return None
