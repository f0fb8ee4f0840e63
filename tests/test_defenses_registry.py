"""ibjax.defenses.registry and the study's analysis.defenses: names, errors, defenses.json and the summary."""

import json
import os

import numpy as np

import pytest
from tiny_config import TINY, short

from ibjax.defenses.registry import DEFENSE_NAMES, DEFENSES, resolve_defenses
from ibjax.fields import ConfigError, override
from ibjax.study import run_study


def test_names_resolve_in_registry_order_and_unknown_ones_fail_in_one_line():
    assert resolve_defenses(["all"]) == DEFENSE_NAMES
    assert resolve_defenses(["uclc", "spectral"]) == ("spectral", "uclc")
    with pytest.raises(ValueError, match="unknown defence.*'nope'.*choose from") as err:
        resolve_defenses(["spectral", "nope"])
    assert "\n" not in str(err.value)
    assert {s.level for s in DEFENSES.values()} == {"sample", "model", "defence", "representation"}


def test_a_study_config_with_an_unknown_defence_fails_before_any_work():
    with pytest.raises((ConfigError, ValueError), match="nope"):
        override(TINY, {"analysis.defenses": ("nope",)}).validate()
    # the parameter-space entries and ABI need batch norms that follow convolutions: refused up front
    preact = {"model.name": "preact_resnet18"}
    with pytest.raises(ConfigError, match="uclc"):
        override(TINY, {**preact, "analysis.defenses": ("all",)}).validate()
    with pytest.raises(ConfigError, match="abi_u"):
        override(TINY, {**preact, "train.abi_u": 3.0}).validate()
    override(TINY, {**preact, "analysis.defenses": ("spectral", "strip")}).validate()


def test_a_run_writes_its_defences_and_summarises_them(tmp_path):
    names = ("spectral", "activation_clustering", "loss_isolation", "loss_trajectory", "uclc", "clp", "mi_monitor",
             "representation")
    cfg = short(TINY, 1, **{"analysis.defenses": names})
    s = run_study(cfg, str(tmp_path / "run"), progress=False)
    with open(os.path.join(tmp_path, "run", "defenses.json")) as f:
        stored = json.load(f)
    assert list(stored) == list(names) and s["defenses"] == stored
    poisons = int(round(0.1 * 600))
    assert np.load(tmp_path / "run" / "sample_losses.npy").shape == (1, 600)  # epochs x samples
    assert stored["loss_isolation"]["epoch"] == 1
    for name in ("spectral", "activation_clustering", "loss_isolation", "loss_trajectory"):
        r = stored[name]
        assert r["level"] == "sample" and r["poisoned"] == poisons and 0.0 <= r["auroc"] <= 1.0
        assert 0.0 <= r["tpr"] <= 1.0 and 0.0 <= r["fpr"] <= 1.0 and r["wall_s"] > 0
    assert stored["uclc"]["level"] == "model" and "score" in stored["uclc"]
    monitor = stored["mi_monitor"]  # from the run's own MI history, read at its MI epochs
    assert monitor["offline"]["epochs"] == list(cfg.mi.epochs) and monitor["score"] == monitor["offline"]["scores"][-1]
    assert 0 <= monitor["suspected_target"] < 10
    with open(os.path.join(tmp_path, "run", "summary.md")) as f:
        md = f.read()
    assert "## Defences on the trained network" in md and "| spectral |" in md and "| uclc |" in md and "| mi_monitor |" in md
