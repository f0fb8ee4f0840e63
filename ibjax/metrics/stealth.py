"""The dynamics-based stealthiness metric (SPEC.md, "Where ibjax must do better"), its error bars,
and the choice of its epochs.

For one MI quantity (I(X;T) or I(T;Y_pred), in nats), one target group (``target_clean`` or
``target``) and the selected epochs e_1..e_E, take the target group's values m_target(e) and every
clean class's values m_c(e), c = 1..C. They are min-max normalised, x -> (x - min) / (max - min + eps)
with eps = 1e-8, in one of two ways:

- ``normalise="per_epoch"`` (default; the authors' ``calculate_normalized_mi_difference``): at each
  selected epoch separately, one min and one max over {m_target(e)} and {m_c(e)} of that epoch;
- ``normalise="joint"`` (ibjax's earlier form, kept as an option): one min and one max over all
  (C + 1) * E values of all selected epochs together.

Then D_e = | mean_c (m_target(e) - m_c(e)) |, D = mean_e D_e. D lies in [0, 1], is 0 when the target
follows the clean classes' mean exactly, and is unchanged (up to eps) by any affine rescale a * x + b
(a > 0) of the quantity's values. The total is the sum of the four D's, (I(X;T), I(T;Y_pred)) x
(``target_clean``, ``target``), in [0, 4]. Lower = the backdoor blends in better (more stealthy). The
metric is dimensionless (the nats cancel). The selected epochs are distinct: an epoch given twice
would weigh twice in the mean, so :func:`stealthiness` refuses it.

Which value of an estimate feeds it is the *read*: ``"train"`` (the mean of the last estimator
epochs' estimates on the critic's own training pairs; the authors' read, mean of the last 5) or
``"heldout"`` (ibjax's read on pairs the critic never saw). Every result names its read and its
normalisation.

Error bars
----------
Where the history carries standard errors (``"heldout_se"`` / ``"train_se"``), :func:`stealthiness`
propagates them with a parametric bootstrap (:func:`stealth_bootstrap`): every value is redrawn from
N(value, se^2) independently, the metric recomputed, and the standard deviation over the draws is
the standard error of each component and of the total. A bootstrap rather than the delta method
because the metric is not smooth where it matters: the min and max switch between groups under noise,
and |.| folds a difference near zero (at D_e = 0 the delta method gives |grad| * se although the
spread of |N(0, s^2)| is s * sqrt(1 - 2/pi) and its mean is not 0). Joint draws also carry the
correlation between components that share the clean classes into the total's error. The key is fixed
(``se_seed``), so results are reproducible.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import rng
from ibjax.metrics.history import available_epochs, check_read, clean_groups, read_matrix
from ibjax.metrics.names import DEFAULT_STEALTH_EPOCHS, NORMALISATIONS, QUANTITIES, STEALTH_TARGET_GROUPS
from ibjax.records import as_mi_histories

__all__ = [
    "DEFAULT_SE_DRAWS",
    "minmax_normalise",
    "stealth_distance",
    "stealth_bootstrap",
    "select_epochs",
    "stealthiness",
    "stealth_description",
]

DEFAULT_SE_DRAWS = 2000
"""Bootstrap draws for the stealthiness error bars: the standard error of a standard error from n
normal draws is about se / sqrt(2 n), 1.6% here."""

_EPS = 1e-8  # the authors' guard in the min-max denominator


def _check_normalise(normalise: str) -> None:
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")


def _check_shapes(target_shape: tuple[int, ...], clean_shape: tuple[int, ...], what: str) -> None:
    """target [..., E] against clean [C, E]: C >= 1 and E >= 1 (an empty mean would be NaN)."""
    if clean_shape[0] == 0:
        raise ValueError(f"no clean classes ({what} has shape {clean_shape}): the stealth distance compares the "
                         "target with the clean classes' mean; give at least one clean class")
    if clean_shape[1] == 0:
        raise ValueError(f"no selected epochs ({what} has shape {clean_shape}): give at least one epoch")


# --------------------------------------------------------------------------------------------------
# Normalisation and the stealth distance


def minmax_normalise(x: jax.Array, axis: Optional[int | tuple[int, ...]] = None, eps: float = 0.0) -> jax.Array:
    """Min-max normalise ``x`` to [0, 1] along ``axis`` (all axes jointly when ``axis`` is None).

    Args:
      x: f32[...], any shape.
      axis: axis or axes over which the minimum and maximum are taken; None = over all elements.
      eps: added to the denominator (the authors add 1e-8).

    Returns:
      f32[same shape as x], (x - min) / (max - min + eps). Where the denominator is 0 (constant input,
      eps = 0) the result is 0, never NaN.
    """
    x = jnp.asarray(x, dtype=jnp.result_type(x, jnp.float32))
    lo = jnp.min(x, axis=axis, keepdims=True)
    hi = jnp.max(x, axis=axis, keepdims=True)
    denom = (hi - lo) + eps
    safe = jnp.where(denom > 0, denom, 1.0)
    return jnp.where(denom > 0, (x - lo) / safe, jnp.zeros_like(x))


@functools.partial(jax.jit, static_argnames=("normalise",))
def stealth_distance(target: jax.Array, clean: jax.Array, normalise: str = "per_epoch",
                     eps: float = _EPS) -> jax.Array:
    """Dynamics-based stealth distance D of one target group for one MI quantity.

    The target's and the clean classes' values are min-max normalised, per selected epoch
    (``"per_epoch"``, the authors') or over all selected epochs at once (``"joint"``); then
    D_e = |mean_c (m_target(e) - m_c(e))| and D = mean_e D_e.

    Args:
      target: f32[E], the target group's MI (nats) at the E selected epochs.
      clean: f32[C, E], every clean class's MI (nats) at the same epochs; C >= 1, E >= 1.
      normalise: static, "per_epoch" or "joint".
      eps: added to every min-max denominator (the authors' 1e-8).

    Returns:
      f32 scalar in [0, 1] (dimensionless). 0 = the target follows the clean classes' mean.

    Raises:
      ValueError: shapes that do not match, no clean class (C = 0) or no epoch (E = 0), whose mean
        would be NaN. Shapes are static under jit and vmap, so this is checked there too.
    """
    _check_normalise(normalise)
    target = jnp.asarray(target, jnp.float32)
    clean = jnp.asarray(clean, jnp.float32)
    if target.ndim != 1 or clean.ndim != 2 or clean.shape[1] != target.shape[0]:
        raise ValueError(f"expected target f32[E] and clean f32[C, E], got {target.shape} and {clean.shape}")
    _check_shapes(target.shape, clean.shape, "clean")
    stacked = jnp.concatenate([target[None, :], clean], axis=0)  # [1 + C, E]
    m = minmax_normalise(stacked, axis=0 if normalise == "per_epoch" else None, eps=eps)
    d_e = jnp.abs(jnp.mean(m[0][None, :] - m[1:], axis=0))
    return jnp.mean(d_e)


@functools.partial(jax.jit, static_argnames=("draws", "normalise"))
def stealth_bootstrap(key: jax.Array, targets: jax.Array, clean: jax.Array, targets_se: jax.Array,
                      clean_se: jax.Array, draws: int = DEFAULT_SE_DRAWS, normalise: str = "per_epoch",
                      eps: float = _EPS) -> jax.Array:
    """Parametric bootstrap of the stealth distance of T target groups that share one set of clean
    classes (e.g. ``target_clean`` and ``target`` of one quantity).

    Each draw redraws every value independently from N(value, se^2), the clean classes once for all
    target groups (so the draws keep the groups' correlation), and recomputes
    :func:`stealth_distance`. ``jnp.std(out, axis=0, ddof=1)`` is the standard error of each D.

    Args:
      key: PRNG key.
      targets: f32[T, E] target groups' MI (nats); targets_se: f32[T, E] their standard errors.
      clean: f32[C, E] clean classes' MI (nats); clean_se: f32[C, E] their standard errors.
      draws: static number of draws.
      normalise: static, "per_epoch" or "joint".
      eps: as in :func:`stealth_distance`.

    Returns:
      f32[draws, T], D of every target group in every draw.
    """
    targets = jnp.asarray(targets, jnp.float32)
    clean = jnp.asarray(clean, jnp.float32)
    if targets.ndim != 2 or clean.ndim != 2 or clean.shape[1] != targets.shape[1]:
        raise ValueError(f"expected targets f32[T, E] and clean f32[C, E], got {targets.shape} and {clean.shape}")
    _check_shapes(targets.shape, clean.shape, "clean")
    targets_se = jnp.broadcast_to(jnp.asarray(targets_se, jnp.float32), targets.shape)
    clean_se = jnp.broadcast_to(jnp.asarray(clean_se, jnp.float32), clean.shape)
    kt, kc = jax.random.split(key)
    t = targets + targets_se * rng.normal(kt, (draws, *targets.shape))
    c = clean + clean_se * rng.normal(kc, (draws, *clean.shape))
    per_target = jax.vmap(lambda ti, ci: stealth_distance(ti, ci, normalise, eps), in_axes=(0, None))
    return jax.vmap(per_target)(t, c)


# --------------------------------------------------------------------------------------------------
# Epochs and the metric of a run


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


def stealth_description(read: str, normalise: str) -> str:
    """Words naming a stealthiness result's read and normalisation, e.g. for table headings."""
    r = "train read (the authors')" if read == "train" else "held-out read (ibjax's)"
    n = "per-epoch min-max (the authors')" if normalise == "per_epoch" else "joint min-max over all epochs"
    return f"{r}, {n}"


def stealthiness(mi: Mapping[str, Any], epochs: Sequence[int] = DEFAULT_STEALTH_EPOCHS,
                 read: str = "heldout", *, normalise: str = "per_epoch", clean: Optional[Sequence[str]] = None,
                 se_draws: int = DEFAULT_SE_DRAWS, se_seed: int = 0) -> dict:
    """The dynamics-based stealthiness metric of one run (lower = more stealthy), with error bars.

    Args:
      mi: the run's MI history, ``mi[quantity][group][str(epoch)] = {"train": float, "heldout":
        float|None, "train_se": float|None, "heldout_se": float|None, ...}`` with quantity in
        ("xt", "ty") (I(X;T), I(T;Y_pred), nats) and groups "target", "target_clean", ... and the
        clean classes "class_<k>" (every key starting with "class_" is a clean class).
      epochs: the selected epochs, distinct; every one must be present for both target groups and
        every clean class of both quantities (use :func:`select_epochs` to substitute nearest epochs
        explicitly).
      read: which estimate to use, "heldout" (ibjax's) or "train" (the authors').
      normalise: "per_epoch" (the authors') or "joint" (see the module docstring).
      clean: optional subset of clean-class group names to compare with (e.g. the reference's three
        tracked classes); default every "class_*" group.
      se_draws: bootstrap draws for the standard errors (0: none).
      se_seed: seed of the bootstrap's fixed key.

    Returns:
      ``{"components": {"xt/target_clean": D, "xt/target": D, "ty/target_clean": D, "ty/target": D},
      "total": sum of the four, "epochs": [...], "read": read, "normalise": normalise,
      "description": words naming both, "clean": [clean groups], "components_se": {same keys: SE} or
      None, "total_se": SE or None, "se_method": str or None}``. Every D is a Python float in [0, 1]
      (:func:`stealth_distance`). The SEs (:func:`stealth_bootstrap`, same units) are given only when
      every value used carries a ``"<read>_se"``; otherwise they are None.

    Raises:
      ValueError: an epoch is missing (the message names the missing and the available ones) or
        given twice, a quantity or group is missing, there are no clean classes, a value is
        None/NaN, or read / normalise is unknown.
    """
    check_read(read)
    _check_normalise(normalise)
    mi = as_mi_histories(mi)
    epochs = [int(e) for e in epochs]
    if not epochs:
        raise ValueError("no epochs selected")
    repeated = sorted({e for e in epochs if epochs.count(e) > 1})
    if repeated:
        raise ValueError(f"epochs {repeated} are selected more than once in {epochs}: each would weigh twice in the "
                         "mean over epochs; give every epoch once (select_epochs returns distinct epochs)")
    components: dict[str, float] = {}
    per_quantity = []
    clean_used: list[str] = []
    for q in QUANTITIES:
        if q not in mi:
            raise ValueError(f"MI history has no quantity {q!r} (has {sorted(mi)})")
        cleans = list(clean) if clean is not None else clean_groups(mi, q)
        if not cleans:
            raise ValueError(f"MI history {q!r} has no clean classes (keys starting with 'class_')"
                             if clean is None else "clean is empty: give at least one clean class, or None for all")
        clean_used = cleans
        avail = available_epochs(mi, (q,), [*STEALTH_TARGET_GROUPS, *cleans])
        missing = sorted(set(epochs) - set(avail))
        if missing:
            raise ValueError(
                f"epochs {missing} missing from the {q!r} MI history; available (for all of "
                f"{list(STEALTH_TARGET_GROUPS)} and the clean classes): {avail}. "
                "Use select_epochs(available, wanted) to substitute the nearest ones explicitly."
            )
        targets, targets_se = read_matrix(mi, q, STEALTH_TARGET_GROUPS, epochs, read)
        clean_values, clean_se = read_matrix(mi, q, cleans, epochs, read)
        for i, g in enumerate(STEALTH_TARGET_GROUPS):
            components[f"{q}/{g}"] = float(stealth_distance(targets[i], clean_values, normalise))
        per_quantity.append((targets, clean_values, targets_se, clean_se))
    result = {
        "components": components,
        "total": float(sum(components.values())),
        "epochs": epochs,
        "read": read,
        "normalise": normalise,
        "description": stealth_description(read, normalise),
        "clean": clean_used,
        "components_se": None,
        "total_se": None,
        "se_method": None,
    }
    if se_draws > 0 and all(p[2] is not None and p[3] is not None for p in per_quantity):
        key = jax.random.PRNGKey(se_seed)
        draws = jnp.stack([stealth_bootstrap(jax.random.fold_in(key, i), t, c, ts, cs, draws=se_draws,
                                             normalise=normalise)
                           for i, (t, c, ts, cs) in enumerate(per_quantity)], axis=1)  # [draws, Q, T]
        flat = np.asarray(draws, np.float64).reshape(se_draws, -1)  # columns in STEALTH_COMPONENTS order
        comp_se = flat.std(axis=0, ddof=1)
        result["components_se"] = {k: float(s) for k, s in zip(components, comp_se)}
        result["total_se"] = float(flat.sum(axis=1).std(ddof=1))
        result["se_method"] = (f"parametric bootstrap: values redrawn from N(value, {read}_se^2), "
                               f"{se_draws} draws, seed {se_seed}")
    return result
