"""ibjax.metrics.runs: protocols of runs (run identity and analysis settings left out), seed
statistics, the tests between ranked neighbours, and the ranking of attacks."""

import math

import numpy as np
import pytest
from scipy import stats

from ibjax import metrics


def test_protocol_labels_ignore_run_identity_fields():
    base = {"dataset": "cifar10", "attack": "badnets", "attack_options": [["size", 5]], "seed": 0,
            "poison": {"ratio": 0.1, "target": 0}, "train": {"epochs": 120, "lr": 0.1}, "xt": {"seed": 3},
            "out": "runs/a"}
    same = {**base, "attack": "blend", "attack_options": [], "seed": 4, "poison": {"ratio": 0.05, "target": 0},
            "xt": {"seed": 9}, "out": "runs/b"}
    labels, differing = metrics.protocol_labels([base, same])
    assert labels == ["P1", "P1"] and differing == {}
    other = {**base, "train": {"epochs": 60, "lr": 0.1}}
    missing = {k: v for k, v in base.items() if k != "dataset"}
    labels, differing = metrics.protocol_labels([base, same, other, missing])
    assert labels == ["P1", "P1", "P2", "P3"]
    assert differing == {"train.epochs": [120, 120, 60, 120], "dataset": ["cifar10", "cifar10", "cifar10", "<absent>"]}
    assert metrics.flatten_config({"a": {"b": [1, [2, 3]], "c": {}}}) == {"a.b": (1, (2, 3)), "a.c": ()}
    assert "poison.target" in metrics.protocol_of(base) and "poison.ratio" not in metrics.protocol_of(base)
    # The identity list is a parameter: ignoring nothing makes the attack part of the protocol.
    assert metrics.protocol_labels([base, same], ignore=())[0] == ["P1", "P2"]


def test_seed_statistics_interval_and_its_coverage():
    s = metrics.seed_statistics([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (s["n"], s["mean"], s["sd"], s["min"], s["max"]) == (3, 2.0, 1.0, 1.0, 3.0)
    assert s["ci_low"] == pytest.approx(2.0 - half) and s["ci_high"] == pytest.approx(2.0 + half)
    one = metrics.seed_statistics([0.7])
    assert one["mean"] == 0.7 and one["sd"] is None and one["ci_low"] is None and one["min"] == one["max"] == 0.7
    assert metrics.seed_statistics([])["mean"] is None
    # The 95% interval covers the true mean in about 95% of repeated samples of 4 seeds.
    rng = np.random.default_rng(14)
    hits = 0
    for _ in range(2000):
        st = metrics.seed_statistics(rng.normal(1.0, 0.3, size=4))
        hits += st["ci_low"] <= 1.0 <= st["ci_high"]
    assert 0.93 < hits / 2000 < 0.97


def test_welch_p_value_matches_its_definition():
    rng = np.random.default_rng(15)
    a, b = rng.normal(0.0, 1.0, size=5), rng.normal(1.0, 3.0, size=8)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    assert metrics.welch_p_value(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert metrics.welch_p_value(a[:1], b) is None
    assert metrics.welch_p_value([1.0, 1.0], [2.0, 2.0]) is None


def runs_for(attack, totals, ratio=0.1, protocol="P1", se=None):
    return [{"run": f"{attack}_s{i}", "attack": attack, "poison_ratio": ratio, "seed": i, "protocol": protocol,
             "total": t, "components": dict(zip(metrics.STEALTH_COMPONENTS, (t / 4,) * 4)), "total_se": se,
             "test_accuracy": 0.9, "asr": 1.0} for i, t in enumerate(totals)]


def test_compare_runs_groups_ranks_and_says_when_within_noise():
    runs = (runs_for("blend", [1.00, 1.05, 0.95]) + runs_for("badnets", [0.40, 0.42, 0.38])
            + runs_for("wanet", [1.02, 1.10, 0.98]) + runs_for("badnets", [2.0, 2.1], ratio=0.05))
    res = metrics.compare_runs(runs)
    first = res["rankings"][0]
    assert res["rankings"][0]["poison_ratio"] == 0.05 and res["rankings"][0]["order"] == ["badnets"]
    main = res["rankings"][1]
    assert main["poison_ratio"] == 0.1 and main["order"] == ["badnets", "blend", "wanet"]
    n1, n2 = main["neighbours"]
    assert (n1["better"], n1["worse"], n1["within_noise"]) == ("badnets", "blend", False) and n1["p_value"] < 0.01
    assert (n2["better"], n2["worse"], n2["within_noise"]) == ("blend", "wanet", True) and n2["p_value"] > 0.05
    assert "Welch" in n1["basis"] and "Welch" in res["test"]
    g = next(g for g in res["groups"] if g["attack"] == "blend")
    assert g["n"] == 3 and g["rank"] == 2 and g["seeds"] == [0, 1, 2]
    assert g["total"]["mean"] == pytest.approx(1.0) and g["total"]["ci_low"] < 1.0 < g["total"]["ci_high"]
    assert g["components"]["xt/target"]["mean"] == pytest.approx(0.25)
    assert first["neighbours"] == []


def test_compare_runs_with_one_seed_per_attack():
    res = metrics.compare_runs(runs_for("a", [0.5]) + runs_for("b", [0.6]))
    nb = res["rankings"][0]["neighbours"][0]
    assert nb["within_noise"] is None and "cannot tell" in nb["basis"]
    assert res["groups"][0]["total"]["ci_low"] is None
    # With bootstrap SEs, a z-test on the estimator noise alone (said so).
    res = metrics.compare_runs(runs_for("a", [0.5], se=0.01) + runs_for("b", [0.6], se=0.01))
    nb = res["rankings"][0]["neighbours"][0]
    assert nb["within_noise"] is False and "estimator" in nb["basis"]
    res = metrics.compare_runs(runs_for("a", [0.5], se=0.2) + runs_for("b", [0.6], se=0.2))
    assert res["rankings"][0]["neighbours"][0]["within_noise"] is True
    with pytest.raises(ValueError, match="seed 0"):
        metrics.compare_runs(runs_for("a", [0.5]) + runs_for("a", [0.6]))
    with pytest.raises(ValueError, match="no runs"):
        metrics.compare_runs([])
    # Different protocols are ranked apart.
    res = metrics.compare_runs(runs_for("a", [0.5]) + runs_for("a", [0.6], protocol="P2"))
    assert [r["protocol"] for r in res["rankings"]] == ["P1", "P2"]


def test_analysis_settings_are_not_protocol():
    """Runs that differ only in how they are analysed, or in where the data lives, share a protocol."""
    base = {"dataset": "cifar10", "data_dir": "/data/a", "attack": "badnets", "seed": 0,
            "train": {"epochs": 120}, "stealth_epochs": [5, 40, 100], "stealth_read": "heldout",
            "stealth_normalise": "per_epoch", "stealth_classes": [], "embed_epochs": [], "embed_points": 2000}
    other = {**base, "data_dir": "/mnt/elsewhere", "stealth_epochs": [1, 8], "stealth_read": "train",
             "stealth_normalise": "joint", "stealth_classes": [1, 2, 3], "embed_epochs": [4], "embed_points": 50}
    labels, differing = metrics.protocol_labels([base, other])
    assert labels == ["P1", "P1"] and differing == {}
    assert not set(metrics.protocol_of(base)) & {"data_dir", "stealth_epochs", "embed_points"}
    # The two lists are separate and explicit: without the analysis list these fields are protocol ...
    labels, differing = metrics.protocol_labels([base, other], analysis=())
    assert labels == ["P1", "P2"] and {"data_dir", "stealth_epochs", "stealth_classes"} <= set(differing)
    # ... and the run-identity list alone does not hold them.
    assert not set(metrics.ANALYSIS_FIELDS) & set(metrics.RUN_IDENTITY_FIELDS)
    # What the data is stays protocol.
    assert metrics.protocol_labels([base, {**base, "dataset": "svhn"}])[1] == {"dataset": ["cifar10", "svhn"]}


def test_prediction_p_value_is_the_prediction_interval_and_is_calibrated():
    seeds, x = [0.50, 0.52, 0.47], 0.60
    m, s, n = np.mean(seeds), np.std(seeds, ddof=1), 3
    t = (x - m) / (s * math.sqrt(1 + 1 / n))
    assert metrics.prediction_p_value(seeds, x) == pytest.approx(2 * stats.t.sf(abs(t), n - 1), rel=1e-9)
    # p = alpha exactly at the edge of the (1 - alpha) prediction interval.
    edge = m + stats.t.ppf(0.975, n - 1) * s * math.sqrt(1 + 1 / n)
    assert metrics.prediction_p_value(seeds, edge) == pytest.approx(0.05, rel=1e-6)
    assert metrics.prediction_p_value([0.5], x) is None and metrics.prediction_p_value([0.5, 0.5], x) is None
    # A new seed from the same population falls outside the 95% interval about 5% of the time.
    rng = np.random.default_rng(16)
    draws = rng.normal(1.0, 0.2, size=(3000, 4))
    rejected = np.mean([metrics.prediction_p_value(d[:3], d[3]) < 0.05 for d in draws])
    assert 0.04 < rejected < 0.06


def test_compare_runs_one_seed_against_several_uses_the_seed_spread():
    """Totals [0.50, 0.52] vs [0.60] with estimator SEs of 0.01: the seeds spread by 0.014, so one
    seed 0.09 away is not distinct (a z-test on the estimator SEs alone called it p = 2e-10)."""
    res = metrics.compare_runs(runs_for("a", [0.50, 0.52], se=0.01) + runs_for("b", [0.60], se=0.01))
    nb = res["rankings"][0]["neighbours"][0]
    sd = np.std([0.50, 0.52], ddof=1)
    want = 2 * stats.t.sf((0.60 - 0.51) / (sd * math.sqrt(1 + 1 / 2)), 1)
    assert nb["p_value"] == pytest.approx(want, rel=1e-9) and nb["p_value"] > 0.1
    assert nb["within_noise"] is True
    assert "prediction" in nb["basis"] and "b's single seed" in nb["basis"] and "a's 2 seeds" in nb["basis"]
    assert "prediction interval" in res["test"]
    # The single seed may be the better one too; far outside the spread it is distinct.
    res = metrics.compare_runs(runs_for("a", [0.10]) + runs_for("b", [0.50, 0.52, 0.49]))
    nb = res["rankings"][0]["neighbours"][0]
    assert (nb["better"], nb["worse"]) == ("a", "b") and nb["within_noise"] is False
    assert "a's single seed" in nb["basis"] and "b's 3 seeds" in nb["basis"]
    # No spread over the seeds: cannot tell.
    nb = metrics.compare_runs(runs_for("a", [0.5, 0.5]) + runs_for("b", [0.6]))["rankings"][0]["neighbours"][0]
    assert nb["within_noise"] is None and "no spread" in nb["basis"]


def test_rankings_order_protocols_by_number():
    runs = [r for p in ("P10", "P2", "P1") for r in runs_for("a", [0.5], protocol=p)]
    res = metrics.compare_runs(runs)
    assert [r["protocol"] for r in res["rankings"]] == ["P1", "P2", "P10"]
    assert [g["protocol"] for g in res["groups"]] == ["P1", "P2", "P10"]
    assert sorted(["P10", "P2", "x", "P1"], key=metrics.protocol_order) == ["P1", "P2", "P10", "x"]


def test_seed_statistics_leave_out_non_numbers():
    s = metrics.seed_statistics([0.4, True, None, float("nan"), "0.6", 0.8])
    assert s["n"] == 2 and s["values"] == [0.4, 0.8]


def test_pooled_mean_takes_the_larger_of_the_spread_and_the_runs_own_errors():
    from ibjax.metrics import pooled_mean

    m, se, n = pooled_mean([1.0, 2.0, 3.0], [0.01, 0.01, 0.01])
    assert (m, n) == (2.0, 3) and se == pytest.approx(1.0 / np.sqrt(3))  # the spread
    m, se, n = pooled_mean([1.0, 1.001], [0.1, 0.1])
    assert se == pytest.approx(np.sqrt(2) * 0.1 / 2)  # the runs' own errors
    assert pooled_mean([1.0, 1.5], [0.1, None])[1] == pytest.approx(0.25)  # an SE missing: the spread
    assert pooled_mean([0.7], [0.2]) == (0.7, 0.2, 1) and pooled_mean([0.7], [None]) == (0.7, None, 1)
    assert pooled_mean([], [])[2] == 0
    with pytest.raises(ValueError, match="standard errors"):
        pooled_mean([1.0, 2.0], [0.1])
