"""The detection grid: clean and poisoned runs of one protocol, every detector on every model.

Does information-flow stealthiness predict what defenders catch? The grid answers it with a
population: ``clean_runs`` clean networks (poison ratio 0, the negatives) and ``runs_per_attack``
backdoored ones per attack of :data:`DETECTION_ATTACKS`, seeds 0, 1, ... (or from ``first_seed``) in every cell (so a
backdoored run has a clean twin trained with its seed). Every run records its stealthiness, the
per-sample training losses and the defences of ``analysis.defenses`` (default
:data:`DETECTION_DEFENSES`, the MI-dynamics monitor among them), and estimates MI at more epochs
than the study's default so that the monitor can be read epoch by epoch.

Clean runs carry the config of the first attack that can share a population (ratio 0), so that they
train in one program with that attack's runs; the attack then only sets which trigger their ASR is
measured with.

Scales (:data:`DETECTION_SCALES`):

- ``cpu``: the ``cpu`` preset's mnist5k study (small noisy CNN, 8 epochs) with MI at epochs
  1, 2, 4, 6 and 8.
- ``gpu``: CIFAR-10, ResNet-18, the default protocol (docs/gpu-runbook.md has the command).

Pure: :func:`detection_grid` returns the runs; :func:`ibjax.study.run_many` runs them,
:mod:`ibjax.metrics.detection` reads them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

from ibjax.fields import override
from ibjax.study.config import StudyConfig
from ibjax.study.paper import shorten
from ibjax.study.population import member_incompatibility
from ibjax.study.presets import PRESET_OVERRIDES, preset

__all__ = ["DETECTION_ATTACKS", "DETECTION_DEFENSES", "CLEAN", "DetectionScale", "DETECTION_SCALES", "DetectionRun",
           "detection_grid"]

DETECTION_ATTACKS: Mapping[str, tuple[str, float]] = {
    "badnets": ("badnets", 0.1),
    "blend": ("blend", 0.1),
    "wanet": ("wanet", 0.1),
    "adaptive_blend": ("adaptive_blend", 0.1),
    "grond": ("grond", 0.5),
    "label_consistent": ("label_consistent", 0.25),
}
"""Attack cells: name -> (attack, poison ratio; of the target class for the clean-label ones)."""

DEFAULT_ATTACKS = ("badnets", "blend", "wanet", "adaptive_blend", "grond")

CLEAN = "clean"
"""The cell of the clean runs."""

DETECTION_DEFENSES = ("mi_monitor", "ban", "uclc", "spectral", "activation_clustering", "loss_isolation",
                      "loss_trajectory", "representation")
"""The defences every run records by default. STRIP is left out: on a CPU it costs about 68 training
epochs per network (docs/defenses.md); add it with ``--analysis.defenses``."""


@dataclasses.dataclass(frozen=True)
class DetectionScale:
    """One scale: its overrides of the preset and its default cell sizes."""

    name: str
    overrides: Mapping[str, Any]
    clean_runs: int
    runs_per_attack: int


_CPU = {k: v for k, v in PRESET_OVERRIDES["cpu"].items() if not k.startswith(("attack.", "poison."))}
DETECTION_SCALES: Mapping[str, DetectionScale] = {
    "cpu": DetectionScale("cpu", {**_CPU, "mi.epochs": (1, 2, 4, 6, 8), "analysis.embedding.epochs": (8,)}, 10, 10),
    "gpu": DetectionScale("gpu", {"data.name": "cifar10", "model.name": "resnet18"}, 20, 20),
}


@dataclasses.dataclass(frozen=True)
class DetectionRun:
    """One run of the grid: its cell (an attack of :data:`DETECTION_ATTACKS` or :data:`CLEAN`), its
    seed and its config."""

    cell: str
    seed: int
    config: StudyConfig

    @property
    def poisoned(self) -> bool:
        return self.cell != CLEAN

    @property
    def name(self) -> str:
        return f"{self.cell}_s{self.seed}"

    def run_dir(self, root: str) -> str:
        return os.path.join(root, "runs", self.name)


def detection_grid(scale: str = "cpu", preset_name: str = "default", *, attacks: Optional[Sequence[str]] = None,
                   clean_runs: Optional[int] = None, runs_per_attack: Optional[int] = None,
                   epochs: Optional[int] = None, first_seed: int = 0, changes: Mapping[str, Any] = ()
                   ) -> list[DetectionRun]:
    """The grid's runs: the clean ones first, then each attack's.

    Args:
      scale: a name of :data:`DETECTION_SCALES`.
      preset_name: the preset the runs start from.
      attacks: names of :data:`DETECTION_ATTACKS` (default BadNets, Blend, WaNet, Adaptive-Blend, Grond).
      clean_runs, runs_per_attack: cell sizes (default the scale's); seeds first_seed, first_seed + 1, ...
      first_seed: the first seed of every cell: a population with other seeds, in the same root or
        another, is a fresh sample of networks (to test what a first population chose).
      epochs: train this many epochs instead (:func:`ibjax.study.paper.shorten`).
      changes: dotted overrides after the scale's (a user's flags); the grid's own fields (attack,
        ratio, seed) win over them. ``analysis.defenses`` defaults to :data:`DETECTION_DEFENSES`.

    Raises:
      ValueError: an unknown scale or attack, or a cell size below 2 (an AUROC needs both classes, a
        bootstrap more than one model of each).
    """
    if scale not in DETECTION_SCALES:
        raise ValueError(f"unknown scale {scale!r}; scales: {', '.join(DETECTION_SCALES)}")
    sc = DETECTION_SCALES[scale]
    attacks = list(attacks) if attacks is not None else list(DEFAULT_ATTACKS)
    unknown = [a for a in attacks if a not in DETECTION_ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"unknown attack(s) {unknown or '(none given)'}; choose from {', '.join(DETECTION_ATTACKS)}")
    n_clean = sc.clean_runs if clean_runs is None else clean_runs
    n_attack = sc.runs_per_attack if runs_per_attack is None else runs_per_attack
    if min(n_clean, n_attack) < 2:
        raise ValueError(f"every cell needs at least 2 runs (an AUROC with a bootstrap interval), got {n_clean} clean "
                         f"and {n_attack} per attack")
    base = override(preset(preset_name), {**sc.overrides, "analysis.defenses": DETECTION_DEFENSES})
    base = override(base, dict(changes))
    if epochs is not None:
        base = shorten(base, epochs)
    # The clean runs carry the first attack that can share a population (not one that optimises its
    # pattern per run, as Grond does), so that they train in one program with its runs.
    shared = [DETECTION_ATTACKS[c][0] for c in attacks
              if member_incompatibility(override(base, {"attack.name": DETECTION_ATTACKS[c][0]})) is None]
    clean_attack = shared[0] if shared else "badnets"
    runs = []
    if first_seed < 0:
        raise ValueError(f"first_seed must be >= 0, got {first_seed}")
    for seed in range(first_seed, first_seed + n_clean):
        runs.append(DetectionRun(CLEAN, seed, override(base, {"attack.name": clean_attack, "poison.ratio": 0.0,
                                                               "seed": seed})))
    for cell in attacks:
        attack, ratio = DETECTION_ATTACKS[cell]
        for seed in range(first_seed, first_seed + n_attack):
            runs.append(DetectionRun(cell, seed, override(base, {"attack.name": attack, "poison.ratio": ratio,
                                                                  "seed": seed})))
    return runs
