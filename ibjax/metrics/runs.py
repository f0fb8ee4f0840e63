"""Across runs: which runs share a protocol, seed statistics, and the ranking of attacks.

:func:`protocol_labels` tells which runs share a protocol: their config (``config.json``) minus the
fields that identify a run within a sweep (:data:`RUN_IDENTITY_FIELDS`: attack, poison ratio, seeds,
output paths) and minus the analysis settings (:data:`ANALYSIS_FIELDS`: which epochs, read,
normalisation and clean classes the stealthiness used, the embeddings, where the data lives), which
change nothing about the training or the MI estimates. The analysis settings a comparison depends on
are checked on the stealthiness results themselves (``experiments.compare``), since they can be
recomputed from the MI history. :func:`compare_runs` groups runs by (attack, poison ratio,
protocol), summarises each group over its seeds (mean, t-based confidence interval, min-max) and
ranks the attacks, saying when neighbours in the ranking are within noise.
"""

from __future__ import annotations

import fnmatch
import math
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ibjax.metrics.names import is_finite_number

__all__ = [
    "RUN_IDENTITY_FIELDS",
    "ANALYSIS_FIELDS",
    "flatten_config",
    "protocol_of",
    "protocol_labels",
    "protocol_order",
    "seed_statistics",
    "pooled_mean",
    "welch_p_value",
    "prediction_p_value",
    "compare_runs",
]

RUN_IDENTITY_FIELDS = (
    # which attack, with which options
    "attack.name", "attack.options", "attack.options.*", "attack_params", "attack_params.*",
    "attack", "attack_options", "attack_options.*",  # their names before config sections
    # the poison ratio
    "poison.ratio", "poison_ratio",
    # seeds (the run's, and any sub-config's)
    "seed", "*.seed",
    # output paths
    "out", "out_dir", "output_dir", "run_dir", "resume", "*.out", "*.out_dir", "*.output_dir", "*.run_dir",
)
"""Config fields (dotted paths of the flattened config.json, ``fnmatch`` patterns) that identify a run
within a sweep. Together with :data:`ANALYSIS_FIELDS` they are left out of the run's *protocol*; every
other field is protocol, and runs compared side by side must share it."""

ANALYSIS_FIELDS = (
    # the stealthiness metric: recomputable from mi.json; the settings used are stored with each
    # result ("epochs", "read", "normalise", "clean") and compared there
    # and silhouettes and 2-D embeddings of T, not used when runs are compared
    "analysis.*",
    # where the data lives, not what it is (the data set is data.name, data.per_class_limit, ...)
    "data.dir",
    # their names before config sections
    "stealth_epochs", "stealth_read", "stealth_normalise", "stealth_classes", "embed_epochs", "embed_points",
    "data_dir",
)
"""Config fields (as :data:`RUN_IDENTITY_FIELDS`) that only choose how a finished run is analysed or
where its data was read from: they change neither the training nor the MI estimates, so they are not
protocol. A comparison checks the stealthiness settings on the results instead."""


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


def _ignored(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pat) for pat in patterns)


def protocol_of(config: Mapping[str, Any], ignore: Sequence[str] = RUN_IDENTITY_FIELDS,
                analysis: Sequence[str] = ANALYSIS_FIELDS) -> dict[str, Any]:
    """The run's protocol: its flattened config without the fields matching ``ignore`` (run
    identity) or ``analysis`` (analysis settings)."""
    return {k: v for k, v in flatten_config(config).items() if not _ignored(k, (*ignore, *analysis))}


_ABSENT = "<absent>"


def protocol_labels(configs: Sequence[Mapping[str, Any]], ignore: Sequence[str] = RUN_IDENTITY_FIELDS,
                    analysis: Sequence[str] = ANALYSIS_FIELDS) -> tuple[list[str], dict[str, list[Any]]]:
    """Which runs share a protocol.

    Args:
      configs: each run's config as a nested dict (config.json).
      ignore: the run-identity fields (see :data:`RUN_IDENTITY_FIELDS`).
      analysis: the analysis settings (see :data:`ANALYSIS_FIELDS`).

    Returns:
      (labels, differing): ``labels[i]`` is "P1", "P2", ... numbered by first appearance (equal
      labels = equal protocols); ``differing`` maps every protocol field whose value is not the same
      in all runs to the list of its values per run ("<absent>" where a run lacks it). One protocol
      iff ``differing`` is empty.
    """
    protos = [protocol_of(c, ignore, analysis) for c in configs]
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


def protocol_order(label: str) -> tuple[int, float, str]:
    """Sort key of a protocol label: "P2" before "P10" (by number), other labels after, by name."""
    m = re.fullmatch(r"P(\d+)", str(label))
    return (0, int(m.group(1)), "") if m else (1, 0, str(label))


def pooled_mean(values: Sequence[float], ses: Sequence[Optional[float]]) -> tuple[float, Optional[float], int]:
    """Mean of several runs' estimates and its standard error, ``(mean, se, n)`` (NaN, None, 0 for none).

    The standard error is the larger of the seeds' spread (``std / sqrt(n)``, n >= 2) and the runs'
    own standard errors combined (``sqrt(sum se_i^2) / n``, when every run has one); for one run,
    its own (None without). Three seeds can agree more closely than each estimate's own noise
    allows (a consistently biased read), and the spread of three is itself noisy: the larger keeps
    such an agreement from passing for a signal.
    """
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return math.nan, None, 0
    if len(ses) != v.size:
        raise ValueError(f"{v.size} values but {len(ses)} standard errors")
    own = [float(s) for s in ses if is_finite_number(s)]
    own_se = math.sqrt(sum(s * s for s in own)) / v.size if len(own) == v.size else None
    if v.size == 1:
        return float(v[0]), own_se, 1
    spread = float(v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()), spread if own_se is None else max(spread, own_se), int(v.size)


def seed_statistics(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean and spread of one quantity over seeds.

    Args:
      values: one value per seed (non-numbers and non-finite values are left out).
      level: confidence level of the interval.

    Returns:
      ``{"n", "mean", "sd", "ci_low", "ci_high", "min", "max", "values"}``: ``sd`` the sample standard
      deviation (ddof 1), [ci_low, ci_high] = mean -+ t_{(1+level)/2, n-1} * sd / sqrt(n) (Student t);
      sd and the interval are None for n < 2 (one seed: no interval). All None for n = 0.
    """
    v = np.asarray([float(x) for x in values if is_finite_number(x)], np.float64)
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


def prediction_p_value(seeds: Sequence[float], single: float) -> Optional[float]:
    """Two-sided p-value that one run's value comes from the population of another group's seeds.

    With the group's n seeds (mean m, sample sd s), a new seed's value x lies in the prediction
    interval m -+ t_{n-1} * s * sqrt(1 + 1/n); the test statistic is t = (x - m) / (s * sqrt(1 + 1/n))
    with n - 1 degrees of freedom. This assumes the single run's seed spread equals the group's (its
    own spread cannot be estimated from one seed).

    Returns:
      p in [0, 1], or None when there are fewer than 2 seeds or they have no spread.
    """
    a = np.asarray(seeds, np.float64)
    n = a.size
    if n < 2:
        return None
    sd = float(a.std(ddof=1))
    if not sd > 0:
        return None
    from scipy import stats

    t = (float(single) - float(a.mean())) / (sd * math.sqrt(1.0 + 1.0 / n))
    return float(2.0 * stats.t.sf(abs(t), n - 1))


def _z_p_value(diff: float, se: float) -> Optional[float]:
    if se <= 0:
        return None
    return float(math.erfc(abs(diff) / se / math.sqrt(2.0)))


def _neighbour_test(a: dict, b: dict) -> tuple[Optional[float], str]:
    """(p-value or None, basis) that groups a and b (ranked neighbours) differ in their mean total."""
    ta, tb = a["total"], b["total"]
    if ta["n"] >= 2 and tb["n"] >= 2:
        p = welch_p_value(ta["values"], tb["values"])
        return p, ("Welch's t-test over seeds" if p is not None else "cannot tell: no spread over seeds")
    if ta["n"] >= 2 or tb["n"] >= 2:
        many, one = (a, b) if ta["n"] >= 2 else (b, a)
        p = prediction_p_value(many["total"]["values"], one["total"]["mean"])
        if p is None:
            return None, f"cannot tell: {many['attack']}'s seeds have no spread"
        return p, (f"prediction-interval t-test: {one['attack']}'s single seed against the spread of "
                   f"{many['attack']}'s {many['total']['n']} seeds ({many['total']['n'] - 1} degrees of freedom)")
    se = [a["total_se_mean"], b["total_se_mean"]]
    if all(s is not None for s in se):
        p = _z_p_value(tb["mean"] - ta["mean"], math.hypot(*se))
        if p is not None:
            return p, "z-test on estimator standard errors (one seed each: training-seed noise not included)"
    return None, "cannot tell: one seed each and no standard errors"


def compare_runs(runs: Sequence[Mapping[str, Any]], *, level: float = 0.95, alpha: float = 0.05) -> dict:
    """Group runs by (attack, poison ratio, protocol), summarise each over seeds, rank the attacks.

    Args:
      runs: one dict per run: "attack", "poison_ratio" (float or None), "seed" (or None), "total" and
        "components" (the stealthiness of :func:`ibjax.metrics.stealthiness`), optional "protocol" (a
        label from :func:`protocol_labels`; default "P1"), "total_se", "components_se",
        "test_accuracy", "asr", "run" (its name).
      level: confidence level of the seed intervals (:func:`seed_statistics`).
      alpha: neighbours in a ranking are "within noise" when the test's p-value exceeds alpha.

    Returns:
      ``{"level", "alpha", "test", "groups": [...], "rankings": [...]}``. Each group: "attack",
      "poison_ratio", "protocol", "runs", "seeds", "n", "rank" (1 = lowest mean total = most
      stealthy, within its poison ratio and protocol), "total" / "test_accuracy" / "asr" (seed
      statistics), "components" ({name: seed statistics}), "total_se_mean" and "components_se_mean"
      (the runs' mean bootstrap SEs of the total and of each component, None if any is absent).
      Each ranking: "poison_ratio", "protocol", "order" (attacks, most stealthy first) and
      "neighbours": for each adjacent pair, "better", "worse", "difference", "p_value", "basis" and
      "within_noise" (True/False, None when it cannot be told). The test, named in "basis":

      - both have >= 2 seeds: Welch's t-test on the seeds' totals;
      - one has a single seed, the other n >= 2: the single total against the other's seeds'
        prediction interval, t = (x - mean) / (sd * sqrt(1 + 1/n)), n - 1 degrees of freedom
        (:func:`prediction_p_value`);
      - one seed each: a z-test on the runs' bootstrap standard errors (estimator noise only,
        training-seed noise not included), or nothing when those are missing.

      Groups and rankings are ordered by poison ratio, then protocol number (P2 before P10), then
      rank.

    Raises:
      ValueError: no runs, a run without a finite total, or two runs of one group with the same seed.
    """
    if not runs:
        raise ValueError("no runs to compare")
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for i, r in enumerate(runs):
        if not is_finite_number(r.get("total")):
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
        ses = [float(m["total_se"]) for m in members if is_finite_number(m.get("total_se"))]
        comp_ses = {k: [float((m.get("components_se") or {}).get(k)) for m in members
                        if is_finite_number((m.get("components_se") or {}).get(k))] for k in comp_names}
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

    def block_key(ratio: Optional[float], proto: str) -> tuple:
        return (ratio is None, ratio or 0.0, protocol_order(proto))

    rankings = []
    by_block: dict[tuple, list[dict]] = {}
    for g in out_groups:
        by_block.setdefault((g["poison_ratio"], g["protocol"]), []).append(g)
    for (ratio, proto), block in sorted(by_block.items(), key=lambda kv: block_key(*kv[0])):
        block.sort(key=lambda g: (g["total"]["mean"], g["attack"]))
        for rank, g in enumerate(block, 1):
            g["rank"] = rank
        neighbours = []
        for a, b in zip(block, block[1:]):
            p, basis = _neighbour_test(a, b)
            neighbours.append({"better": a["attack"], "worse": b["attack"],
                               "difference": b["total"]["mean"] - a["total"]["mean"],
                               "p_value": p, "basis": basis, "within_noise": None if p is None else bool(p > alpha)})
        rankings.append({"poison_ratio": ratio, "protocol": proto, "order": [g["attack"] for g in block],
                         "neighbours": neighbours})
    out_groups.sort(key=lambda g: (*block_key(g["poison_ratio"], g["protocol"]), g["rank"]))
    return {"level": level, "alpha": alpha,
            "test": (f"two-sided, within noise if p > {alpha:g}: Welch's t-test on the seeds' totals; one seed "
                     "against several: the other's seed prediction interval (t with n - 1 degrees of freedom); "
                     "one seed each: a z-test on the runs' bootstrap standard errors"),
            "groups": out_groups, "rankings": rankings}
