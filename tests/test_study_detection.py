"""The detection grid (ibjax.study.detection) and its command (experiments.detection), end to end on a
tiny population of clean and backdoored runs."""

import json
import os

import pytest

from ibjax.study.detection import CLEAN, DETECTION_DEFENSES, detection_grid
from ibjax.study.population import group_populations

# The tiny study's sizes (tests/tiny_config.py) as the command's flags; no candidate critics (tested in
# tests/test_mi_selection.py and test_mi_gaussian.py), whose programs would be most of the compile time.
TINY_FLAGS = ["--data.per-class-limit", "60", "--train.batch-size", "32", "--analysis.embedding.points", "120"]
for q in ("xt", "ty"):
    TINY_FLAGS += [f"--mi.{q}.protocol.epochs", "6", f"--mi.{q}.protocol.batch-size", "16",
                   f"--mi.{q}.protocol.negatives", "32", f"--mi.{q}.critic.hidden", "16", "16",
                   f"--mi.{q}.protocol.read-epochs", "2", f"--mi.{q}.candidates"]


def test_the_grid_pairs_clean_and_backdoored_runs_seed_by_seed():
    grid = detection_grid("cpu")
    clean = [r for r in grid if r.cell == CLEAN]
    assert len(clean) == 10 and len(grid) == 10 + 5 * 10
    assert {r.config.poison.ratio for r in clean} == {0.0} and not any(r.poisoned for r in clean)
    assert {r.config.attack.name for r in clean} == {"badnets"}  # they train beside the first attack's runs
    grond = [r for r in grid if r.cell == "grond"]
    assert {r.config.poison.ratio for r in grond} == {0.5} and [r.seed for r in grond] == list(range(10))
    c = grid[0].config
    assert c.data.name == "mnist5k" and c.mi.epochs == (1, 2, 4, 6, 8) and c.analysis.defenses == DETECTION_DEFENSES
    assert len({r.run_dir("root") for r in grid}) == len(grid)
    # clean runs and the first attack's share one population; Grond optimises a pattern per run
    small = detection_grid("cpu", attacks=["badnets", "grond"], clean_runs=2, runs_per_attack=2)
    groups = group_populations([r.config for r in small], None)
    assert sorted(len(g) for g in groups) == [1, 1, 4]
    first_grond = detection_grid("cpu", attacks=["grond", "wanet"], clean_runs=2, runs_per_attack=2)
    assert first_grond[0].config.attack.name == "wanet"


def test_the_grid_refuses_unknown_attacks_and_cells_too_small_for_an_auroc():
    with pytest.raises(ValueError, match="unknown attack"):
        detection_grid("cpu", attacks=["trojan"])
    with pytest.raises(ValueError, match="at least 2 runs"):
        detection_grid("cpu", clean_runs=1)
    with pytest.raises(ValueError, match="unknown scale"):
        detection_grid("tpu")
    later = detection_grid("cpu", attacks=["badnets"], clean_runs=2, runs_per_attack=3, first_seed=10)
    assert [(r.name, r.config.seed) for r in later] == [("clean_s10", 10), ("clean_s11", 11), ("badnets_s10", 10),
                                                        ("badnets_s11", 11), ("badnets_s12", 12)]
    with pytest.raises(ValueError, match="first_seed"):
        detection_grid("cpu", first_seed=-1)
    user = detection_grid("gpu", attacks=["wanet"], clean_runs=2, runs_per_attack=2,
                          changes={"seed": 9, "poison.ratio": 0.3, "analysis.defenses": ("uclc",)})
    assert [r.seed for r in user] == [0, 1, 0, 1] and [r.config.poison.ratio for r in user] == [0.0, 0.0, 0.1, 0.1]
    assert user[0].config.model.name == "resnet18" and user[0].config.analysis.defenses == ("uclc",)


def test_the_detection_command_runs_a_tiny_population_and_writes_its_tables(tmp_path):
    from ibjax.commands import detection

    root = str(tmp_path / "det")
    argv = ["--attacks", "badnets", "--clean-runs", "2", "--runs-per-attack", "2", "--epochs", "2", "--root", root,
            "--resamples", "50", "--quiet", "--analysis.defenses", "mi_monitor", "uclc", "loss_trajectory",
            "representation", *TINY_FLAGS]
    report = detection.main(argv)
    assert report["missing"] == [] and os.path.isfile(report["path"])
    rows = {(r["detector"], r["attack"]): r for r in report["model_level"]}
    # two clean models: enough for the baseline monitor, not for the calibrated one (a scatter of one)
    assert set(rows) == {("mi_monitor", "badnets"), ("mi_monitor_baseline", "badnets"), ("uclc", "badnets")}
    assert rows[("mi_monitor", "badnets")]["positives"] == 2 and rows[("mi_monitor", "badnets")]["negatives"] == 2
    assert 0.0 <= rows[("mi_monitor", "badnets")]["auroc"] <= 1.0
    (sample,) = report["sample_level"]
    assert sample["detector"] == "loss_trajectory" and sample["auroc"]["n"] == 2
    assert {t["variant"] for t in report["monitor"]} == {"blind", "baseline"}
    assert report["monitor"][0]["epochs"] == [1, 2]
    # a clean run records the monitor, and NaN for the group metrics it has no backdoor group for
    clean = json.load(open(os.path.join(root, "runs", "clean_s0", "defenses.json")))
    assert clean["mi_monitor"]["offline"]["epochs"] == [1, 2] and clean["representation"]["backdoor_samples"] == 0
    out = os.path.join(root, "report")
    for f in ("detection.md", "detection.json", "model_level.csv", "sample_level.csv", "monitor.csv", "monitor.json",
              "correlations.csv", "figures/roc_mi_monitor.png", "figures/monitor_offline_blind.png",
              "figures/stealth_vs_detection_heldout.png"):
        assert os.path.isfile(os.path.join(out, f)), f
    # finished runs are read again, not retrained
    again = detection.main(argv)
    assert again["model_level"] == report["model_level"]
