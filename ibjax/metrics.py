"""Metrics on a run's MI history, on its representations, and across runs.

Everything here is a pure function. The array functions (:func:`minmax_normalise`,
:func:`stealth_distance`, :func:`stealth_bootstrap`, :func:`silhouette_samples`,
:func:`silhouette_score`, :func:`pca_2d`) take and return ``jnp`` arrays and are usable under jit,
vmap and grad (with the noted static arguments); the dict functions (:func:`stealthiness`,
:func:`size_matched_comparisons`, :func:`group_silhouettes`, :func:`select_epochs`,
:func:`compare_runs`, ...) read plain Python structures as stored in a run's files and return plain
Python values.

Stealthiness (SPEC.md, "Where ibjax must do better")
----------------------------------------------------
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
metric is dimensionless (the nats cancel).

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

Across runs
-----------
:func:`protocol_labels` tells which runs share a protocol (their config minus
:data:`RUN_IDENTITY_FIELDS`); :func:`compare_runs` groups runs by (attack, poison ratio, protocol),
summarises each group over seeds (mean, t-based confidence interval, min-max) and ranks the attacks,
saying when neighbours in the ranking are within noise (Welch's t-test).
"""

from __future__ import annotations

import fnmatch
import functools
import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "QUANTITIES",
    "READS",
    "NORMALISATIONS",
    "STEALTH_TARGET_GROUPS",
    "STEALTH_COMPONENTS",
    "DEFAULT_STEALTH_EPOCHS",
    "DEFAULT_SE_DRAWS",
    "SIZE_MATCHED_GROUPS",
    "RUN_IDENTITY_FIELDS",
    "minmax_normalise",
    "stealth_distance",
    "stealth_bootstrap",
    "select_epochs",
    "clean_groups",
    "available_epochs",
    "stealthiness",
    "stealth_description",
    "size_matched_comparisons",
    "size_matched_markdown",
    "flatten_config",
    "protocol_of",
    "protocol_labels",
    "seed_statistics",
    "welch_p_value",
    "compare_runs",
    "silhouette_samples",
    "silhouette_score",
    "cluster_ids",
    "group_silhouettes",
    "pca_2d",
]

QUANTITIES = ("xt", "ty")
"""MI quantities of a run's history: ``"xt"`` = I(X;T), ``"ty"`` = I(T;Y_pred), both in nats."""

READS = ("heldout", "train")
"""Which value of an estimate is read: ibjax's held-out read, or the authors' training read."""

NORMALISATIONS = ("per_epoch", "joint")
"""Min-max normalisation of the stealth distance: the authors' per-epoch form, or over all epochs."""

STEALTH_TARGET_GROUPS = ("target_clean", "target")
"""Target groups whose trajectories the stealthiness metric compares with the clean classes'."""

STEALTH_COMPONENTS = tuple(f"{q}/{g}" for q in QUANTITIES for g in STEALTH_TARGET_GROUPS)
"""Names of the four components, in the order they are summed and stored."""

DEFAULT_STEALTH_EPOCHS = (5, 40, 100)

DEFAULT_SE_DRAWS = 2000
"""Bootstrap draws for the stealthiness error bars: the standard error of a standard error from n
normal draws is about se / sqrt(2 n), 1.6% here."""

SIZE_MATCHED_GROUPS = ("target", "target_clean", "target_backdoor", "target_sample")

_EPS = 1e-8  # the authors' guard in the min-max denominator


def _check_read(read: str) -> None:
    if read not in READS:
        raise ValueError(f"read must be one of {READS}, got {read!r}")


def _check_normalise(normalise: str) -> None:
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")


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
      clean: f32[C, E], every clean class's MI (nats) at the same epochs.
      normalise: static, "per_epoch" or "joint".
      eps: added to every min-max denominator (the authors' 1e-8).

    Returns:
      f32 scalar in [0, 1] (dimensionless). 0 = the target follows the clean classes' mean.
    """
    _check_normalise(normalise)
    target = jnp.asarray(target, jnp.float32)
    clean = jnp.asarray(clean, jnp.float32)
    if target.ndim != 1 or clean.ndim != 2 or clean.shape[1] != target.shape[0]:
        raise ValueError(f"expected target f32[E] and clean f32[C, E], got {target.shape} and {clean.shape}")
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
    targets_se = jnp.broadcast_to(jnp.asarray(targets_se, jnp.float32), targets.shape)
    clean_se = jnp.broadcast_to(jnp.asarray(clean_se, jnp.float32), clean.shape)
    kt, kc = jax.random.split(key)
    t = targets + targets_se * jax.random.normal(kt, (draws, *targets.shape))
    c = clean + clean_se * jax.random.normal(kc, (draws, *clean.shape))
    per_target = jax.vmap(lambda ti, ci: stealth_distance(ti, ci, normalise, eps), in_axes=(0, None))
    return jax.vmap(per_target)(t, c)


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


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _value(entry: Any, read: str, where: str) -> float:
    value = entry.get(read) if isinstance(entry, Mapping) else None
    if not _finite(value):
        hint = ' (try read="train")' if read == "heldout" else ""
        raise ValueError(f"MI history has no finite {read!r} value at {where}: {value!r}{hint}")
    return float(value)


def _se(entry: Any, read: str) -> Optional[float]:
    """The entry's standard error of ``read`` (nats), None where absent (old files) or not finite."""
    se = entry.get(f"{read}_se") if isinstance(entry, Mapping) else None
    return float(se) if _finite(se) and float(se) >= 0 else None


def _entry(mi: Mapping[str, Any], quantity: str, group: str, epoch: int) -> Any:
    hist = mi[quantity][group]
    return hist[str(epoch)] if str(epoch) in hist else hist[epoch]


def _matrix(mi: Mapping[str, Any], quantity: str, groups: Sequence[str], epochs: Sequence[int],
            read: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Values f32[G, E] (nats) of ``groups`` at ``epochs``, and their standard errors f32[G, E], or
    None when any one of them lacks a standard error."""
    values = np.zeros((len(groups), len(epochs)), np.float32)
    ses = np.zeros_like(values)
    complete = True
    for i, g in enumerate(groups):
        for j, e in enumerate(epochs):
            entry = _entry(mi, quantity, g, e)
            values[i, j] = _value(entry, read, f"{quantity}/{g}/epoch {e}")
            se = _se(entry, read)
            complete &= se is not None
            ses[i, j] = se if se is not None else 0.0
    return values, (ses if complete else None)


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
      epochs: the selected epochs; every one must be present for both target groups and every clean
        class of both quantities (use :func:`select_epochs` to substitute nearest epochs explicitly).
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
      ValueError: an epoch is missing (the message names the missing and the available ones), a
        quantity or group is missing, there are no clean classes, a value is None/NaN, or read /
        normalise is unknown.
    """
    _check_read(read)
    _check_normalise(normalise)
    epochs = [int(e) for e in epochs]
    if not epochs:
        raise ValueError("no epochs selected")
    components: dict[str, float] = {}
    per_quantity = []
    clean_used: list[str] = []
    for q in QUANTITIES:
        if q not in mi:
            raise ValueError(f"MI history has no quantity {q!r} (has {sorted(mi)})")
        cleans = list(clean) if clean is not None else clean_groups(mi, q)
        if not cleans:
            raise ValueError(f"MI history {q!r} has no clean classes (keys starting with 'class_')")
        clean_used = cleans
        avail = available_epochs(mi, (q,), [*STEALTH_TARGET_GROUPS, *cleans])
        missing = sorted(set(epochs) - set(avail))
        if missing:
            raise ValueError(
                f"epochs {missing} missing from the {q!r} MI history; available (for all of "
                f"{list(STEALTH_TARGET_GROUPS)} and the clean classes): {avail}. "
                "Use select_epochs(available, wanted) to substitute the nearest ones explicitly."
            )
        targets, targets_se = _matrix(mi, q, STEALTH_TARGET_GROUPS, epochs, read)
        clean_values, clean_se = _matrix(mi, q, cleans, epochs, read)
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


# --------------------------------------------------------------------------------------------------
# Size-matched comparisons


def size_matched_comparisons(mi: Mapping[str, Any], read: str = "heldout", *, epochs: Optional[Sequence[int]] = None,
                             z: float = 2.0, quantities: Sequence[str] = QUANTITIES,
                             groups: Sequence[str] = SIZE_MATCHED_GROUPS,
                             clean: Optional[Sequence[str]] = None) -> dict:
    """Which target-group-vs-clean-classes differences exceed their standard errors, and whether the
    whole target class's difference survives in the size-matched ``target_sample`` group.

    For each quantity q and epoch e: the clean classes' mean m_clean, its standard error
    sqrt(sum_c se_c^2) / C (estimator noise only: the classes are a fixed set, so their spread is
    reported separately as the clean range); for each target group g: diff = m_g - m_clean,
    diff_se = sqrt(se_g^2 + se_clean^2), and ``beyond`` = |diff| > z * diff_se. The target class holds
    about twice a clean class's samples and InfoNCE reads depend on group size, so a difference of
    the whole ``target`` group is said to *survive* when ``target_sample`` (a subsample of the target
    class the size of a clean class) is also beyond z standard errors with the same sign.
    z = 2 (about 95% two-sided); z = 1 would flag about a third of differences that are pure noise.

    Args:
      mi: the run's MI history (see :func:`stealthiness`).
      read: "heldout" or "train"; its standard errors are ``"<read>_se"``.
      epochs: epochs to report (default: every epoch that all used groups share, per quantity).
      z: how many standard errors a difference must exceed.
      quantities: quantities to report, those absent from ``mi`` are skipped (e.g. add "xt_online").
      groups: target groups to compare with the clean classes; absent ones are skipped.
      clean: clean-class groups (default every "class_*").

    Returns:
      ``{"read", "z", "quantities": {q: {str(e): {"clean": {"mean", "se", "min", "max", "n"},
      "groups": {g: {"value", "se", "diff", "diff_se", "z_score", "beyond", "outside_clean_range"}},
      "size_matched": verdict}}}, "flagged": [...]}``, values in nats. ``se``, ``diff_se``,
      ``z_score`` and ``beyond`` are None where a standard error is missing (``z_score`` also where
      the combined standard error is 0). ``verdict`` is one of
      "survives" (target and target_sample beyond z SE, same sign), "does not survive" (target beyond,
      target_sample not: probably a group-size effect), "not beyond noise" (target within z SE),
      "unknown" (a standard error or target_sample missing). ``flagged`` lists every (quantity, epoch,
      group) whose difference is beyond z SE, each with diff, diff_se and, for "target", the verdict.
    """
    _check_read(read)
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    out: dict[str, Any] = {"read": read, "z": float(z), "quantities": {}, "flagged": []}
    for q in quantities:
        if q not in mi:
            continue
        cleans = list(clean) if clean is not None else clean_groups(mi, q)
        if not cleans:
            raise ValueError(f"MI history {q!r} has no clean classes (keys starting with 'class_')")
        present = [g for g in groups if g in mi[q]]
        avail = available_epochs(mi, (q,), [*present, *cleans])
        use = [int(e) for e in epochs] if epochs is not None else avail
        missing = sorted(set(use) - set(avail))
        if missing:
            raise ValueError(f"epochs {missing} missing from the {q!r} MI history; available: {avail}")
        per_epoch = {}
        for e in use:
            cv, cse = _matrix(mi, q, cleans, [e], read)
            cv, n = cv[:, 0].astype(np.float64), len(cleans)
            c_mean = float(cv.mean())
            c_se = float(np.sqrt(np.sum(cse[:, 0].astype(np.float64) ** 2)) / n) if cse is not None else None
            entry = {"clean": {"mean": c_mean, "se": c_se, "min": float(cv.min()), "max": float(cv.max()), "n": n},
                     "groups": {}}
            for g in present:
                ent = _entry(mi, q, g, e)
                v = _value(ent, read, f"{q}/{g}/epoch {e}")
                se = _se(ent, read)
                diff = v - c_mean
                d_se = math.sqrt(se ** 2 + c_se ** 2) if se is not None and c_se is not None else None
                zs = diff / d_se if d_se is not None and d_se > 0 else None
                beyond = bool(abs(diff) > z * d_se) if d_se is not None else None
                entry["groups"][g] = {"value": v, "se": se, "diff": diff, "diff_se": d_se, "z_score": zs,
                                      "beyond": beyond, "outside_clean_range": bool(v < cv.min() or v > cv.max())}
            gs = entry["groups"]
            if "target" not in gs or gs["target"]["beyond"] is None:
                verdict = "unknown"
            elif not gs["target"]["beyond"]:
                verdict = "not beyond noise"
            elif "target_sample" not in gs or gs["target_sample"]["beyond"] is None:
                verdict = "unknown"
            elif gs["target_sample"]["beyond"] and np.sign(gs["target_sample"]["diff"]) == np.sign(gs["target"]["diff"]):
                verdict = "survives"
            else:
                verdict = "does not survive"
            entry["size_matched"] = verdict
            for g, r in gs.items():
                if r["beyond"]:
                    out["flagged"].append({"quantity": q, "epoch": e, "group": g, "diff": r["diff"], "diff_se": r["diff_se"],
                                           **({"size_matched": verdict} if g == "target" else {})})
            per_epoch[str(e)] = entry
        out["quantities"][q] = per_epoch
    return out


def size_matched_markdown(result: Mapping[str, Any], digits: int = 3, only_flagged: bool = False) -> str:
    """A Markdown table of :func:`size_matched_comparisons`: one row per (quantity, epoch, group);
    with ``only_flagged``, only the differences beyond noise and the whole target group's rows."""
    f = lambda v: "n/a" if v is None else f"{v:+.{digits}f}"  # noqa: E731
    lines = [f"Target groups vs the clean classes' mean ({result['read']} read, nats); 'beyond' = |diff| > "
             f"{result['z']:g} x its standard error; size-matched: does the whole target class's difference "
             "persist in target_sample (a clean-class-sized subsample)?", "",
             "| quantity | epoch | group | diff | SE | beyond | outside clean range | size-matched |",
             "|---|---|---|---|---|---|---|---|"]
    for q, per in result["quantities"].items():
        for e, entry in per.items():
            for g, r in entry["groups"].items():
                if only_flagged and not r["beyond"] and g != "target":
                    continue
                se = "n/a" if r["diff_se"] is None else f"{r['diff_se']:.{digits}f}"
                beyond = "n/a" if r["beyond"] is None else ("yes" if r["beyond"] else "no")
                sm = entry["size_matched"] if g == "target" else ""
                lines.append(f"| {q} | {e} | {g} | {f(r['diff'])} | {se} | {beyond} | "
                             f"{'yes' if r['outside_clean_range'] else 'no'} | {sm} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Comparing runs: protocols and seeds

RUN_IDENTITY_FIELDS = (
    # which attack, with which options
    "attack", "attack.*", "attack_options", "attack_options.*", "attack_params", "attack_params.*",
    # the poison ratio
    "poison.ratio", "poison_ratio",
    # seeds (the run's, and any sub-config's)
    "seed", "*.seed",
    # output paths
    "out", "out_dir", "output_dir", "run_dir", "resume", "*.out", "*.out_dir", "*.output_dir", "*.run_dir",
)
"""Config fields (dotted paths of the flattened config.json, ``fnmatch`` patterns) that identify a run
within a sweep. Every other field is the run's *protocol*: runs compared side by side must share it."""


def _freeze(v: Any) -> Any:
    """A hashable, comparable copy of a JSON value (lists -> tuples, dicts -> sorted item tuples)."""
    if isinstance(v, Mapping):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config dict to ``{"a.b.c": leaf}``; list and tuple leaves become tuples.

    An empty nested dict is a leaf (``{}`` frozen to ``()``), so that its presence still counts.
    """
    flat: dict[str, Any] = {}
    for k, v in config.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(flatten_config(v, path + "."))
        else:
            flat[path] = _freeze(v)
    return flat


def _ignored(path: str, ignore: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pat) for pat in ignore)


def protocol_of(config: Mapping[str, Any], ignore: Sequence[str] = RUN_IDENTITY_FIELDS) -> dict[str, Any]:
    """The run's protocol: its flattened config without the fields matching ``ignore``."""
    return {k: v for k, v in flatten_config(config).items() if not _ignored(k, ignore)}


_ABSENT = "<absent>"


def protocol_labels(configs: Sequence[Mapping[str, Any]],
                    ignore: Sequence[str] = RUN_IDENTITY_FIELDS) -> tuple[list[str], dict[str, list[Any]]]:
    """Which runs share a protocol.

    Args:
      configs: each run's config as a nested dict (config.json).
      ignore: the run-identity fields (see :data:`RUN_IDENTITY_FIELDS`).

    Returns:
      (labels, differing): ``labels[i]`` is "P1", "P2", ... numbered by first appearance (equal
      labels = equal protocols); ``differing`` maps every protocol field whose value is not the same
      in all runs to the list of its values per run ("<absent>" where a run lacks it). One protocol
      iff ``differing`` is empty.
    """
    protos = [protocol_of(c, ignore) for c in configs]
    keys = sorted(set().union(*protos)) if protos else []
    differing = {}
    for k in keys:
        vals = [p.get(k, _ABSENT) for p in protos]
        if any(v != vals[0] for v in vals[1:]):
            differing[k] = vals
    seen: dict[tuple, str] = {}
    labels = []
    for p in protos:
        sig = tuple((k, p.get(k, _ABSENT)) for k in differing)
        labels.append(seen.setdefault(sig, f"P{len(seen) + 1}"))
    return labels, differing


def seed_statistics(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean and spread of one quantity over seeds.

    Args:
      values: one value per seed.
      level: confidence level of the interval.

    Returns:
      ``{"n", "mean", "sd", "ci_low", "ci_high", "min", "max", "values"}``: ``sd`` the sample standard
      deviation (ddof 1), [ci_low, ci_high] = mean -+ t_{(1+level)/2, n-1} * sd / sqrt(n) (Student t);
      sd and the interval are None for n < 2 (one seed: no interval). All None for n = 0.
    """
    v = np.asarray([float(x) for x in values if _finite(x)], np.float64)
    n = int(v.size)
    out = {"n": n, "mean": None, "sd": None, "ci_low": None, "ci_high": None, "min": None, "max": None,
           "values": [float(x) for x in v]}
    if n == 0:
        return out
    out.update(mean=float(v.mean()), min=float(v.min()), max=float(v.max()))
    if n >= 2:
        from scipy import stats

        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
        out.update(sd=sd, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided p-value of Welch's t-test (unequal variances) that two seed samples share a mean.

    None when either sample has fewer than 2 values or both have zero spread (test undefined).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.size < 2 or b.size < 2 or (a.std() == 0 and b.std() == 0):
        return None
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _z_p_value(diff: float, se: float) -> Optional[float]:
    if se <= 0:
        return None
    return float(math.erfc(abs(diff) / se / math.sqrt(2.0)))


def compare_runs(runs: Sequence[Mapping[str, Any]], *, level: float = 0.95, alpha: float = 0.05) -> dict:
    """Group runs by (attack, poison ratio, protocol), summarise each over seeds, rank the attacks.

    Args:
      runs: one dict per run: "attack", "poison_ratio" (float or None), "seed" (or None), "total" and
        "components" (the stealthiness of :func:`stealthiness`), optional "protocol" (a label from
        :func:`protocol_labels`; default "P1"), "total_se", "components_se", "test_accuracy", "asr",
        "run" (its name).
      level: confidence level of the seed intervals (:func:`seed_statistics`).
      alpha: neighbours in a ranking are "within noise" when the test's p-value exceeds alpha.

    Returns:
      ``{"level", "alpha", "test", "groups": [...], "rankings": [...]}``. Each group: "attack",
      "poison_ratio", "protocol", "runs", "seeds", "n", "rank" (1 = lowest mean total = most
      stealthy, within its poison ratio and protocol), "total" / "test_accuracy" / "asr" (seed
      statistics), "components" ({name: seed statistics}), "total_se_mean" and "components_se_mean"
      (the runs' mean bootstrap SEs of the total and of each component, None if any is absent).
      Each ranking: "poison_ratio", "protocol", "order"
      (attacks, most stealthy first) and "neighbours": for each adjacent pair, "better", "worse",
      "p_value", "basis" and "within_noise" (True/False, None when it cannot be told). The test is
      Welch's t-test on the seeds' totals where both groups have >= 2 seeds; otherwise a z-test on
      the runs' bootstrap standard errors (estimator noise only, training-seed noise not included),
      or nothing when those are missing.

    Raises:
      ValueError: no runs, a run without a finite total, or two runs of one group with the same seed.
    """
    if not runs:
        raise ValueError("no runs to compare")
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for i, r in enumerate(runs):
        if not _finite(r.get("total")):
            raise ValueError(f"run {r.get('run', i)!r} has no finite stealthiness total: {r.get('total')!r}")
        ratio = None if r.get("poison_ratio") is None else float(r["poison_ratio"])
        groups.setdefault((str(r["attack"]), ratio, str(r.get("protocol") or "P1")), []).append(r)
    out_groups = []
    for (attack, ratio, proto), members in groups.items():
        seeds = [m.get("seed") for m in members]
        known = [s for s in seeds if s is not None]
        if len(set(known)) < len(known):
            dup = next(s for s in known if known.count(s) > 1)
            names = [str(m.get("run", "?")) for m in members if m.get("seed") == dup]
            raise ValueError(f"runs {names} are the same attack ({attack}), poison ratio and seed {dup}: "
                             "pass each seed once")
        comp_names = list(dict.fromkeys(k for m in members for k in (m.get("components") or {})))
        ses = [float(m["total_se"]) for m in members if _finite(m.get("total_se"))]
        comp_ses = {k: [float((m.get("components_se") or {}).get(k)) for m in members
                        if _finite((m.get("components_se") or {}).get(k))] for k in comp_names}
        out_groups.append({
            "attack": attack, "poison_ratio": ratio, "protocol": proto,
            "runs": [str(m.get("run", "")) for m in members], "seeds": seeds, "n": len(members),
            "total": seed_statistics([m["total"] for m in members], level),
            "components": {k: seed_statistics([(m.get("components") or {}).get(k) for m in members], level)
                           for k in comp_names},
            "test_accuracy": seed_statistics([m.get("test_accuracy") for m in members], level),
            "asr": seed_statistics([m.get("asr") for m in members], level),
            "total_se_mean": float(np.mean(ses)) if len(ses) == len(members) else None,
            "components_se_mean": ({k: float(np.mean(v)) for k, v in comp_ses.items()}
                                   if comp_names and all(len(v) == len(members) for v in comp_ses.values()) else None),
            "rank": None,
        })
    rankings = []
    by_block: dict[tuple, list[dict]] = {}
    for g in out_groups:
        by_block.setdefault((g["poison_ratio"], g["protocol"]), []).append(g)
    for (ratio, proto), block in sorted(by_block.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0.0, kv[0][1])):
        block.sort(key=lambda g: (g["total"]["mean"], g["attack"]))
        for rank, g in enumerate(block, 1):
            g["rank"] = rank
        neighbours = []
        for a, b in zip(block, block[1:]):
            ta, tb = a["total"], b["total"]
            p, basis = None, "cannot tell: one seed and no standard errors"
            if ta["n"] >= 2 and tb["n"] >= 2:
                p = welch_p_value(ta["values"], tb["values"])
                basis = "Welch's t-test over seeds" if p is not None else "cannot tell: no spread over seeds"
            else:
                se = [t["sd"] / math.sqrt(t["n"]) if t["n"] >= 2 else g["total_se_mean"]
                      for t, g in ((ta, a), (tb, b))]
                if all(s is not None for s in se):
                    p = _z_p_value(tb["mean"] - ta["mean"], math.hypot(*se))
                    basis = ("z-test on estimator standard errors (one seed: training-seed noise not included)"
                             if p is not None else basis)
            neighbours.append({"better": a["attack"], "worse": b["attack"], "difference": tb["mean"] - ta["mean"],
                               "p_value": p, "basis": basis, "within_noise": None if p is None else bool(p > alpha)})
        rankings.append({"poison_ratio": ratio, "protocol": proto, "order": [g["attack"] for g in block],
                         "neighbours": neighbours})
    out_groups.sort(key=lambda g: (g["poison_ratio"] is None, g["poison_ratio"] or 0.0, g["protocol"], g["rank"]))
    return {"level": level, "alpha": alpha,
            "test": (f"Welch's t-test (two-sided) on the seeds' totals, within noise if p > {alpha:g}; "
                     "with one seed, a z-test on the runs' bootstrap standard errors"),
            "groups": out_groups, "rankings": rankings}

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
