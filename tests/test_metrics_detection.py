"""Reading a detection population (ibjax.metrics.detection) on synthetic records: AUROC against
scikit-learn, the threshold set on clean models, target identification, the monitor epoch by epoch
and the correlations against scipy."""

import math

import jax
import numpy as np
import pytest
from scipy import stats

from ibjax.defenses.monitor import DEFENDER_TARGET_GROUP
from ibjax.metrics import detection as det
from ibjax.records import MIHistory

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _models(rng, n_clean=12, attacks=(("weak", 0.3), ("strong", 3.0)), n=12):
    models = []
    for s in range(n_clean):
        models.append(det.DetectedModel("clean", s, False, 0, 10, {
            "ban": {"level": "model", "score": float(rng.normal()), "suspected_target": int(rng.integers(10)), "wall_s": 1.0},
            "spectral": {"level": "sample", "auroc": math.nan, "tpr": 0.0, "fpr": 0.15, "wall_s": 0.5}}))
    for a, (name, shift) in enumerate(attacks):
        for s in range(n):
            models.append(det.DetectedModel(name, s, True, 0, 10, {
                "ban": {"level": "model", "score": float(rng.normal() + shift), "suspected_target": 0 if s % 2 else 3,
                        "wall_s": 2.0},
                "spectral": {"level": "sample", "auroc": 0.6 + 0.3 * a + 0.01 * s, "tpr": 0.5, "fpr": 0.1, "wall_s": 0.5},
                "representation": {"level": "representation", "linear_probe": 0.7 + 0.2 * a, "dswd": 1.0}},
                stealth={"heldout": 2.0 - a + 0.01 * s, "train": 1.0 + a}))
    return models


def test_model_level_rows_match_scikit_learn_and_set_the_threshold_on_clean_models():
    models = _models(np.random.default_rng(0))
    rows = {(r["detector"], r["attack"]): r for r in det.model_level_table(models, jax.random.PRNGKey(0), resamples=200)}
    assert set(rows) == {("ban", "weak"), ("ban", "strong")}
    clean = [m for m in models if not m.poisoned]
    for attack in ("weak", "strong"):
        group = clean + [m for m in models if m.cell == attack]
        y = [m.poisoned for m in group]
        s = [m.defenses["ban"]["score"] for m in group]
        r = rows[("ban", attack)]
        assert r["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-6)
        assert r["auroc_low"] <= r["auroc"] <= r["auroc_high"]
        t = sorted(m.defenses["ban"]["score"] for m in clean)[-1]  # 5% of 12 clean models: none may lie above
        assert r["tpr_at_fpr"] == pytest.approx(np.mean([m.defenses["ban"]["score"] > t
                                                         for m in models if m.cell == attack]))
        assert r["fpr"] == 0.0
        assert r["target_rate"] == 0.5 and r["wall_s"] == pytest.approx(1.5)
    assert rows[("ban", "strong")]["auroc"] > 0.95 > rows[("ban", "weak")]["auroc"]


def test_sample_level_rows_are_seed_statistics_over_the_attacks_models():
    rows = {(r["detector"], r["attack"]): r for r in det.sample_level_table(_models(np.random.default_rng(1)))}
    r = rows[("spectral", "strong")]
    assert r["auroc"]["n"] == 12 and r["auroc"]["mean"] == pytest.approx(0.9 + 0.01 * 5.5)
    assert r["auroc"]["ci_low"] < r["auroc"]["mean"] < r["auroc"]["ci_high"]


def test_correlations_across_attacks_match_scipy_and_their_interval_covers_them():
    rng = np.random.default_rng(2)
    attacks = [(f"a{i}", 0.5 * i) for i in range(5)]
    models = _models(rng, attacks=attacks, n=6)
    rows = det.stealth_correlations(models, jax.random.PRNGKey(1), resamples=200)
    by = {(r["read"], r["detector"]): r for r in rows}
    assert {d for _, d in by} == {"ban", "spectral", "representation/silhouette", "representation/davies_bouldin",
                                  "representation/ot_distance", "representation/linear_probe", "representation/dswd"}
    r = by[("heldout", "spectral")]  # stealth falls as the sample AUROC rises: rho = tau = -1
    assert r["attacks"] == [a for a, _ in attacks]
    assert r["spearman"] == pytest.approx(-1.0) and r["kendall"] == pytest.approx(-1.0)
    assert r["spearman_low"] <= r["spearman"] <= r["spearman_high"]
    b = by[("train", "ban")]
    assert b["spearman"] == pytest.approx(stats.spearmanr(b["stealth"], b["detectability"])[0])
    assert b["kendall"] == pytest.approx(stats.kendalltau(b["stealth"], b["detectability"])[0])
    assert b["spearman_low"] <= b["spearman"] <= b["spearman_high"]
    assert math.isnan(by[("train", "representation/dswd")]["spearman"])  # a constant metric has no rank order


def test_per_model_correlations_pool_the_backdoored_models_and_match_scipy():
    models = _models(np.random.default_rng(4), attacks=[(f"a{i}", 0.5 * i) for i in range(3)], n=8)
    rows = {(r["read"], r["detector"]): r for r in det.run_level_correlations(models, jax.random.PRNGKey(2),
                                                                             resamples=200)}
    r = rows[("heldout", "ban")]
    bad = [m for m in models if m.poisoned]
    x = [m.stealth["heldout"] for m in bad]
    y = [m.defenses["ban"]["score"] for m in bad]
    assert r["models"] == 24
    assert r["spearman"] == pytest.approx(stats.spearmanr(x, y)[0]) and r["kendall"] == pytest.approx(stats.kendalltau(x, y)[0])
    assert r["spearman_low"] <= r["spearman"] <= r["spearman_high"]
    assert r["spearman_high"] - r["spearman_low"] < 1.0


def _mi(rng, deviant: bool, epochs=(1, 2, 4), quantities=("xt", "ty")):
    groups = ["target", "target_backdoor", "target_clean", DEFENDER_TARGET_GROUP] + [f"class_{k}" for k in range(1, 10)]
    out = {}
    for q in quantities:
        d = {}
        for g in groups:
            d[g] = {}
            for j, e in enumerate(epochs):
                v = 1.5 + rng.normal(0, 0.1) + (0.8 if deviant and g == DEFENDER_TARGET_GROUP and j >= 1 else 0.0)
                d[g][str(e)] = {"heldout": v, "train": v}
        out[q] = MIHistory.from_json(d)
    return out


def test_the_monitor_table_reads_the_latency_and_the_target_epoch_by_epoch():
    rng = np.random.default_rng(3)
    models = [det.DetectedModel("clean", s, False, 0, 10, {}, mi=_mi(rng, False)) for s in range(8)]
    models += [det.DetectedModel("badnets", s, True, 0, 10, {}, mi=_mi(rng, True)) for s in range(8)]
    for variant in det.MONITOR_VARIANTS:
        t = det.monitor_epoch_table(models, variant=variant)
        r = t["attacks"]["badnets"]
        assert t["epochs"] == [1, 2, 4] and len(t["scores"]) == 16
        assert r["auroc"][0] < 0.9 and min(r["auroc"][1:]) >= 0.95 and r["latency"] == 2
        assert r["target_rate"][-1] == 1.0
    # as a detector of its own: the last epoch's read of the baseline variant
    t = det.monitor_epoch_table(models, variant="baseline")
    rows = det.model_level_table(det.with_monitor(models, "baseline"), jax.random.PRNGKey(0), resamples=100)
    (row,) = [r for r in rows if r["detector"] == "mi_monitor_baseline"]
    assert row["auroc"] == pytest.approx(t["attacks"]["badnets"]["auroc"][-1]) and row["target_rate"] == 1.0
    # from the table already computed: the same entry; a table of other models is refused
    assert [m.defenses for m in det.with_monitor(models, t)] == [m.defenses for m in det.with_monitor(models, "baseline")]
    with pytest.raises(ValueError, match="scores 16 models"):
        det.with_monitor(models[:4], t)
    with pytest.raises(ValueError, match="no quantity 'xt_online'"):
        det.monitor_epoch_table(models, source="online")
    with pytest.raises(ValueError, match="variant"):
        det.monitor_epoch_table(models, variant="oracle")
    # the calibrated variant is the baseline one with the statistic "clean"
    cal = det.monitor_epoch_table(models, variant="calibrated")
    assert (cal["statistic"], cal["accumulate"]) == ("clean", "mean")
    assert cal["scores"] == det.monitor_epoch_table(models, variant="baseline", statistic="clean")["scores"]
    with pytest.raises(ValueError, match="a variant against them"):
        det.monitor_epoch_table(models, variant="blind", statistic="clean")
    with pytest.raises(ValueError, match="at least 3 clean"):
        det.monitor_epoch_table(models[6:], variant="calibrated")


def test_the_monitor_reads_the_online_critics_every_epoch():
    rng = np.random.default_rng(6)
    online = ("xt", "ty", "xt_online", "ty_online")
    models = [det.DetectedModel("clean", s, False, 0, 10, {}, mi=_mi(rng, False, (1, 2, 3, 4, 5), online))
              for s in range(6)]
    models += [det.DetectedModel("wanet", s, True, 0, 10, {}, mi=_mi(rng, True, (1, 2, 3, 4, 5), online))
               for s in range(6)]
    t = det.monitor_epoch_table(models, source="online", variant="baseline")
    assert t["source"] == "online" and t["epochs"] == [1, 2, 3, 4, 5]
    assert t["attacks"]["wanet"]["latency"] == 2
