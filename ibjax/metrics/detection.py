"""Reading a detection population: which detectors catch which attacks, when the MI monitor does, and
whether the stealthiness metric predicts it.

Inputs are :class:`DetectedModel` records, one per trained network (a clean one or a backdoored
one), built from a run directory's ``defenses.json``, ``summary.json`` and MI history. Everything
here is a function of those records and a key:

- :func:`model_level_table`: per model-level detector and attack, the AUROC of the attack's models
  against every clean model with a stratified-bootstrap interval, the TPR at a threshold set on
  the clean models' scores alone (5% FPR), how often the suspected target is the true one, and the
  wall time;
- :func:`sample_level_table`: per sample-level detector and attack, the poisoned-sample AUROC, TPR
  and FPR as seed statistics;
- :func:`monitor_epoch_table`: the MI-dynamics monitor read epoch by epoch (what it knows at each
  measured epoch), blind or against the clean models (:data:`MONITOR_VARIANTS`), with the first
  epoch its AUROC reaches 0.9;
- :func:`stealth_correlations`: per attack, the stealthiness next to each detector's AUROC, and
  their Spearman and Kendall correlations across attacks with seed-bootstrap intervals.

Correlations use :mod:`scipy.stats` (already a dependency: the seed intervals' Student t).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ibjax.defenses.monitor import auroc_by_epoch, clean_baseline, defender_view, detection_latency, monitor_scores
from ibjax.defenses.roc import auroc_interval, detection_rates, threshold_at_fpr
from ibjax.metrics.runs import seed_statistics

__all__ = ["DetectedModel", "model_level_table", "sample_level_table", "monitor_histories", "monitor_epoch_table", "with_monitor",
           "stealth_correlations", "run_level_correlations", "MonitorVariant", "MONITOR_VARIANTS",
           "REPRESENTATION_METRICS"]


@dataclasses.dataclass(frozen=True)
class DetectedModel:
    """One trained network of a detection population.

    Attributes:
      cell: its attack's name, or ``"clean"``; seed: its seed; poisoned: whether it is backdoored.
      target: its config's poison target (the true target of a backdoored model).
      num_classes: classes of its data set.
      defenses: its ``defenses.json`` (``{name: record}``).
      stealth: ``{read: total}`` of its stealthiness metric (backdoored models; NaN if not computed).
      mi: its MI history (``{quantity: MIHistory}``), for the monitor's variants.
    """

    cell: str
    seed: int
    poisoned: bool
    target: int
    num_classes: int
    defenses: Mapping[str, Any]
    stealth: Mapping[str, float] = dataclasses.field(default_factory=dict)
    mi: Optional[Mapping[str, Any]] = None


def _attacks(models: Sequence[DetectedModel]) -> list[str]:
    return list(dict.fromkeys(m.cell for m in models if m.poisoned))


def _level(models: Sequence[DetectedModel], level: str) -> list[str]:
    names: dict[str, None] = {}
    for m in models:
        for name, rec in m.defenses.items():
            if rec.get("level") == level:
                names[name] = None
    return list(names)


def _f(x) -> float:
    return float(x) if x is not None and np.isfinite(x) else math.nan


def _mean(values) -> float:
    """Mean of the finite values; NaN (quietly) when there are none."""
    v = np.asarray([_f(x) for x in values], float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _score_table(key: jax.Array, scores: np.ndarray, positive: np.ndarray, fpr: float, resamples: int) -> dict:
    a, lo, hi = auroc_interval(key, scores, positive, resamples=resamples)
    t = threshold_at_fpr(scores[~positive], fpr)
    tpr, got_fpr = detection_rates(scores, positive, t)
    return {"auroc": _f(a), "auroc_low": _f(lo), "auroc_high": _f(hi), "tpr_at_fpr": _f(tpr), "fpr": _f(got_fpr),
            "positives": int(positive.sum()), "negatives": int((~positive).sum())}


def model_level_table(models: Sequence[DetectedModel], key: jax.Array, *, fpr: float = 0.05,
                      resamples: int = 1000) -> list[dict]:
    """One row per model-level detector (its ``score``, higher = more suspicious) and attack.

    Returns dicts with ``detector``, ``attack``, ``auroc`` and its 95% bootstrap interval
    (``auroc_low``, ``auroc_high``), ``tpr_at_fpr`` (threshold: at most ``fpr`` of the clean models
    above it), ``target_rate`` (the fraction of the attack's models whose suspected target is theirs;
    NaN for a detector that names none), ``wall_s`` (mean seconds per model).
    """
    clean = [m for m in models if not m.poisoned]
    rows = []
    for d, name in enumerate(_level(models, "model")):
        for a, attack in enumerate(_attacks(models)):
            bad = [m for m in models if m.cell == attack]
            group = [m for m in clean + bad if name in m.defenses]
            scores = np.asarray([_f(m.defenses[name].get("score")) for m in group], np.float32)
            positive = np.asarray([m.poisoned for m in group], bool)
            ok = np.isfinite(scores)
            scores, positive = scores[ok], positive[ok]
            row = {"detector": name, "attack": attack}
            if positive.any() and (~positive).any():
                row.update(_score_table(jax.random.fold_in(key, 1000 * d + a), scores, positive, fpr, resamples))
            hits = [m.defenses[name]["suspected_target"] == m.target for m in bad
                    if name in m.defenses and "suspected_target" in m.defenses[name]]
            row["target_rate"] = float(np.mean(hits)) if hits else math.nan
            row["wall_s"] = float(np.mean([m.defenses[name].get("wall_s", math.nan) for m in group])) if group else math.nan
            rows.append(row)
    return rows


def sample_level_table(models: Sequence[DetectedModel]) -> list[dict]:
    """One row per sample-level detector and attack: ``auroc``, ``tpr``, ``fpr`` of poisoned-sample
    detection as seed statistics (``{"mean", "ci_low", "ci_high", ...}`` of
    :func:`ibjax.metrics.runs.seed_statistics`) over the attack's models, and ``wall_s`` (mean)."""
    rows = []
    for name in _level(models, "sample"):
        for attack in _attacks(models):
            recs = [m.defenses[name] for m in models if m.cell == attack and name in m.defenses]
            rows.append({"detector": name, "attack": attack,
                         **{k: seed_statistics([r.get(k) for r in recs]) for k in ("auroc", "tpr", "fpr")},
                         "wall_s": float(np.mean([r.get("wall_s", math.nan) for r in recs])) if recs else math.nan})
    return rows


REPRESENTATION_METRICS = ("silhouette", "davies_bouldin", "ot_distance", "linear_probe", "dswd")
"""The representation entry's metrics set beside the stealthiness (``defenses.json``'s keys)."""


@dataclasses.dataclass(frozen=True)
class MonitorVariant:
    """How the monitor reads a population's histories: against the population's clean models or not,
    and the options of :func:`ibjax.defenses.monitor.monitor_scores`."""

    against_clean: bool
    statistic: str
    accumulate: str = "mean"


MONITOR_VARIANTS: Mapping[str, MonitorVariant] = {
    "blind": MonitorVariant(against_clean=False, statistic="z"),
    "baseline": MonitorVariant(against_clean=True, statistic="z"),
    "calibrated": MonitorVariant(against_clean=True, statistic="clean"),
}
"""The monitor's variants, by name: ``blind`` (every class against the others, no reference),
``baseline`` (first the clean models' mean per-class history is subtracted: a defender who trained
clean networks of the task) and ``calibrated`` (that mean subtracted, then each class's departure
in units of the clean models' own scatter, the network's common shift taken out: the statistic
``"clean"``). Against the clean models, each clean model is scored against the OTHER clean models."""


def monitor_histories(models: Sequence[DetectedModel], source: str = "offline") -> tuple[np.ndarray, tuple[int, ...]]:
    """Every model's defender view (:func:`ibjax.defenses.monitor.defender_view`) on the epochs they
    all hold: ``(values f64[M, Q, K, E], epochs)``; ``source`` ``"offline"`` (``xt``, ``ty``) or
    ``"online"`` (``xt_online``, ``ty_online``)."""
    quantities = ("xt", "ty") if source == "offline" else ("xt_online", "ty_online")
    views = [defender_view(m.mi, m.target, m.num_classes, quantities=quantities) for m in models]
    common = sorted(set.intersection(*(set(e) for _, e in views)))
    if not common:
        raise ValueError(f"the models share no {source} MI epoch at which every class was read")
    values = np.stack([v[..., [list(e).index(c) for c in common]] for v, e in views])
    return values, tuple(common)


def _baselines(values: np.ndarray, clean: np.ndarray, statistic: str, accumulate: str):
    """Per model, the baseline of the clean models other than itself: their mean history f[M, Q, K, E],
    or for the statistic ``"clean"`` their :class:`~ibjax.defenses.monitor.CleanBaseline` (leaves with
    a leading M axis)."""
    idx = np.flatnonzero(clean)
    others = [values[idx[idx != i]] for i in range(len(values))]
    if statistic != "clean":
        return np.stack([o.mean(axis=0) for o in others])
    fits = [clean_baseline(o, accumulate) for o in others]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *fits)


def monitor_epoch_table(models: Sequence[DetectedModel], *, source: str = "offline", variant: str = "blind",
                        statistic: Optional[str] = None, accumulate: Optional[str] = None, level: float = 0.9) -> dict:
    """The monitor read at every epoch for every attack.

    ``variant`` names a :data:`MONITOR_VARIANTS` entry; ``statistic`` / ``accumulate`` replace its own.

    Returns ``{"epochs", "variant", "source", "statistic", "accumulate", "attacks": {attack: {"auroc":
    [E], "target_rate": [E], "latency": first epoch the AUROC reaches ``level`` and keeps it, or None}},
    "scores": f[M, E], "targets": int[M, E] as lists}``.
    """
    if variant not in MONITOR_VARIANTS:
        raise ValueError(f"variant must be one of {tuple(MONITOR_VARIANTS)}, got {variant!r}")
    v = MONITOR_VARIANTS[variant]
    statistic, accumulate = statistic or v.statistic, accumulate or v.accumulate
    values, epochs = monitor_histories(models, source)
    poisoned = np.asarray([m.poisoned for m in models], bool)
    if not v.against_clean and statistic == "clean":
        raise ValueError("the statistic 'clean' reads against clean networks: use a variant against them "
                         "('baseline', 'calibrated')")
    need = 1 if not v.against_clean else 3 if statistic == "clean" else 2
    if (~poisoned).sum() < need:
        raise ValueError(f"the {variant} monitor with statistic {statistic!r} needs at least {need} clean models "
                         "(its negatives and baseline)")
    if v.against_clean:
        base = _baselines(values, ~poisoned, statistic, accumulate)
        res = jax.vmap(lambda h, b: monitor_scores(h, b, statistic=statistic, accumulate=accumulate))(values, base)
    else:
        res = jax.vmap(lambda h: monitor_scores(h, statistic=statistic, accumulate=accumulate))(values)
    scores, targets = np.asarray(res.score), np.asarray(res.target)
    out = {"epochs": list(epochs), "variant": variant, "source": source, "statistic": statistic,
           "accumulate": accumulate, "attacks": {}, "scores": scores.tolist(), "targets": targets.tolist()}
    truth = np.asarray([m.target for m in models])
    for attack in _attacks(models):
        pick = ~poisoned | np.asarray([m.cell == attack for m in models])
        a = np.asarray(auroc_by_epoch(scores[pick], poisoned[pick]))
        hit = (targets == truth[:, None])[np.asarray([m.cell == attack for m in models])]
        out["attacks"][attack] = {"auroc": a.tolist(), "target_rate": hit.mean(axis=0).tolist(),
                                  "latency": detection_latency(a, epochs, level)}
    return out


def with_monitor(models: Sequence[DetectedModel], table: Union[str, dict] = "baseline", *, source: str = "offline",
                 **options) -> list[DetectedModel]:
    """``models`` with the monitor's read at the last common epoch added as a model-level entry
    ``mi_monitor_<variant>`` (``score``, ``suspected_target``), so that the tables and the correlations
    treat it as any detector (the variants against clean models need the population's clean models,
    so they cannot run inside one run as the registry's blind ``mi_monitor`` does).

    ``table``: a variant of :data:`MONITOR_VARIANTS` (read here with ``source`` and ``options``), or
    a :func:`monitor_epoch_table` of these models already computed.
    """
    t = table if isinstance(table, dict) else monitor_epoch_table(models, source=source, variant=table, **options)
    if len(t["scores"]) != len(models):
        raise ValueError(f"the monitor table scores {len(t['scores'])} models, not these {len(models)}")
    name = f"mi_monitor_{t['variant']}"
    return [dataclasses.replace(m, defenses={**m.defenses, name: {
        "level": "model", "score": t["scores"][i][-1], "suspected_target": t["targets"][i][-1],
        "epoch": t["epochs"][-1], "wall_s": 0.0}}) for i, m in enumerate(models)]


def _auroc_host(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC on the host (ties one half), for the bootstrap's many small calls; the
    same number as :func:`ibjax.defenses.roc.auroc`."""
    from scipy import stats

    ok = np.isfinite(scores)
    s, y = scores[ok], positive[ok]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not (n_pos and n_neg):
        return math.nan
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _correlation(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan, math.nan
    return float(stats.spearmanr(x[ok], y[ok])[0]), float(stats.kendalltau(x[ok], y[ok])[0])


def _per_attack(models: Sequence[DetectedModel], attacks: Sequence[str], detector: str, read: str) -> tuple:
    """(stealth f[A], detectability f[A]) of each attack: the mean stealth total of its models and
    the detector's AUROC (model level, against the clean models), else the mean of its models'
    reads (:func:`_model_value`: a sample-level AUROC, a representation metric)."""
    clean = [m for m in models if not m.poisoned]
    model_level = detector in _level(models, "model")
    st, det = [], []
    for attack in attacks:
        bad = [m for m in models if m.cell == attack]
        st.append(_mean([m.stealth.get(read) for m in bad]))
        if model_level:
            s = np.asarray([_model_value(m, detector) for m in clean + bad], float)
            det.append(_auroc_host(s, np.asarray([m.poisoned for m in clean + bad], bool)))
        else:
            det.append(_mean([_model_value(m, detector) for m in bad]))
    return np.asarray(st, float), np.asarray(det, float)


def _detectors(models: Sequence[DetectedModel]) -> list[str]:
    """What the correlations read: every model- and sample-level detector, and each representation
    metric as ``"representation/<metric>"``."""
    return [*_level(models, "model"), *_level(models, "sample"),
            *(f"{n}/{k}" for n in _level(models, "representation") for k in REPRESENTATION_METRICS)]


def _with_intervals(row: dict, boot: np.ndarray, level: float) -> dict:
    """``row`` with the percentile interval of each correlation's bootstrap (``boot`` f[B, 2]:
    Spearman, Kendall) as ``<name>_low`` / ``<name>_high``."""
    tail = (1 - level) / 2
    for j, name in enumerate(("spearman", "kendall")):
        b = boot[:, j][np.isfinite(boot[:, j])] if boot.size else np.zeros(0)
        row[f"{name}_low"], row[f"{name}_high"] = ((float(np.quantile(b, tail)), float(np.quantile(b, 1 - tail)))
                                                   if b.size else (math.nan, math.nan))
    return row


def _rng(key: jax.Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().astype(np.uint32))


def stealth_correlations(models: Sequence[DetectedModel], key: jax.Array, *, reads: Sequence[str] = ("heldout", "train"),
                         resamples: int = 1000, level: float = 0.95) -> list[dict]:
    """Does stealthiness predict detection? Per stealth read and detector (model- and sample-level;
    and each representation metric, ``"representation/<metric>"``, its mean over the attack's models),
    across attacks: Spearman's rho and Kendall's tau between each attack's mean stealthiness and its
    detectability (a higher metric means less stealthy in the paper's sense, so a predictive metric
    correlates positively with detectability), each with a seed-bootstrap percentile interval (every
    cell's models resampled with replacement, clean ones included, and both sides recomputed).

    Returns rows ``{"read", "detector", "attacks", "stealth": [A], "detectability": [A], "spearman",
    "spearman_low", "spearman_high", "kendall", "kendall_low", "kendall_high"}``.
    """
    attacks = _attacks(models)
    cells = {c: [m for m in models if m.cell == c] for c in dict.fromkeys(m.cell for m in models)}
    rng = _rng(key)
    draws = [[cells[c][i] for c in cells for i in rng.integers(0, len(cells[c]), len(cells[c]))]
             for _ in range(resamples)]
    rows = []
    for read in reads:
        for det in _detectors(models):
            st, dt = _per_attack(models, attacks, det, read)
            rho, tau = _correlation(st, dt)
            boot = np.asarray([_correlation(*_per_attack(d, attacks, det, read)) for d in draws])
            rows.append(_with_intervals({"read": read, "detector": det, "attacks": attacks, "stealth": st.tolist(),
                                         "detectability": dt.tolist(), "spearman": rho, "kendall": tau}, boot, level))
    return rows


def _model_value(m: DetectedModel, detector: str) -> float:
    """One model's detectability read of ``detector``: a model-level score, a sample-level AUROC, or a
    representation metric (``"representation/<metric>"``)."""
    if "/" in detector:
        entry, metric = detector.split("/", 1)
        return _f(m.defenses.get(entry, {}).get(metric))
    rec = m.defenses.get(detector, {})
    return _f(rec.get("auroc") if rec.get("level") == "sample" else rec.get("score"))


def run_level_correlations(models: Sequence[DetectedModel], key: jax.Array, *,
                           reads: Sequence[str] = ("heldout", "train"), resamples: int = 1000,
                           level: float = 0.95) -> list[dict]:
    """The same question model by model: over every backdoored model (all attacks pooled), Spearman
    and Kendall between its stealthiness and its detectability read (:func:`_model_value`), with
    bootstrap intervals over models. More points than the attacks' means, so narrower intervals; it
    mixes the between-attack question with the within-attack seed-to-seed one.

    Returns rows ``{"read", "detector", "models", "spearman", "spearman_low", "spearman_high",
    "kendall", "kendall_low", "kendall_high"}``.
    """
    bad = [m for m in models if m.poisoned]
    draws = _rng(key).integers(0, len(bad), (resamples, len(bad)))
    rows = []
    for read in reads:
        x = np.asarray([_f(m.stealth.get(read)) for m in bad], float)
        for d in _detectors(models):
            y = np.asarray([_model_value(m, d) for m in bad], float)
            rho, tau = _correlation(x, y)
            boot = np.asarray([_correlation(x[i], y[i]) for i in draws])
            rows.append(_with_intervals({"read": read, "detector": d, "models": int((np.isfinite(x) & np.isfinite(y)).sum()),
                                         "spearman": rho, "kendall": tau}, boot, level))
    return rows
