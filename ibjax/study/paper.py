"""The paper's grid (arXiv 2511.21923, "Exploring Dynamic Properties of Backdoor Training Through
Information Bottleneck"): which runs, at which scale, and what the claims read from them.

The grid: every attack variant of :data:`PAPER_VARIANTS` (BadNets, Blend, WaNet, Adaptive-Blend at a
10% poison ratio; label-consistent on 10% and 25% of the target class) at the noise level
:data:`MAIN_NOISE`, Blend also at :data:`LOW_NOISE` (the noise claim, C3), on every data set of the
scale, for several seeds (the authors ran one; seeds give intervals). Every run estimates the three
quantities (I(X;T), I(T;Y_pred) and I(X;Y_pred), for the data processing claim C5), runs the bound
checks after training (C6) and embeds T at the training phases with t-SNE, as the authors draw it
(PCA where scikit-learn is missing).

Scales (:data:`SCALES`):

- ``gpu``: the full protocol: CIFAR-10 and SVHN (``svhn_cropped``), the first 4,000 training images
  per class, ResNet-18 (``--model.name vgg16`` for VGG-16), 120 epochs, MI at SPEC.md's 9 epochs.
- ``cpu``: what 2 CPU cores run in about an hour: the ``cpu`` preset's mnist5k study (4,000
  training digits, the small noisy CNN, 8 epochs, MI at epochs 1, 4 and 8 on a bank of 2 draws),
  3 seeds. docs/measurements.md has the measurement that chose it.

With the ``reference`` preset, a scale changes only sizes (data, network, recipe, MI epochs and the
estimators' lengths), never the authors' rules. Pure: :func:`paper_grid` returns configs; running
them is :func:`ibjax.study.run_many`'s, reading them :func:`claim_run`'s.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

from ibjax.fields import override
from ibjax.metrics.claims import ClaimRun
from ibjax.metrics.clustering import check_embedding
from ibjax.records import RunHistory
from ibjax.study.config import StudyConfig
from ibjax.study.presets import PRESET_OVERRIDES, preset
from ibjax.triggers import REGISTRY

__all__ = ["PAPER_VARIANTS", "MAIN_NOISE", "LOW_NOISE", "LOW_NOISE_VARIANTS", "Scale", "SCALES", "GridRun",
           "paper_grid", "shorten", "claim_run"]

PAPER_VARIANTS: Mapping[str, tuple[str, float]] = {
    "badnets": ("badnets", 0.1),
    "blend": ("blend", 0.1),
    "wanet": ("wanet", 0.1),
    "adaptive_blend": ("adaptive_blend", 0.1),
    "label_consistent_10": ("label_consistent", 0.1),
    "label_consistent_25": ("label_consistent", 0.25),
}
"""The grid's rows: name -> (attack, poison ratio; of the target class for label-consistent)."""

MAIN_NOISE = 0.4
"""The paper's noise level (both noise layers)."""
LOW_NOISE = 0.1
"""The noise claim's lower level."""
LOW_NOISE_VARIANTS = ("blend",)
"""The variants also run at :data:`LOW_NOISE` (C3 reads Blend's backdoor group)."""

_GRID = {"mi.quantities": ("xt", "ty", "xy"), "analysis.bound_checks": True}
# The estimator's length and sizes: what a scale may change under the reference preset.
_SIZE_SUFFIXES = ("protocol.epochs", "protocol.batch_size", "protocol.negatives", "critic.hidden")


@dataclasses.dataclass(frozen=True)
class Scale:
    """One scale of the grid.

    Attributes:
      name: "cpu" or "gpu".
      datasets: the data sets it runs.
      overrides: dotted overrides of the preset (applied before the grid's own fields).
      seeds: its default seeds.
    """

    name: str
    datasets: tuple[str, ...]
    overrides: Mapping[str, Any]
    seeds: tuple[int, ...] = (0, 1, 2)

    def for_preset(self, name: str) -> dict[str, Any]:
        """The overrides under preset ``name``: all of them, or for ``reference`` the sizes only."""
        if name != "reference":
            return dict(self.overrides)
        return {k: v for k, v in self.overrides.items()
                if not k.startswith("mi.") or k == "mi.epochs" or k.endswith(_SIZE_SUFFIXES)}


_CPU = {k: v for k, v in PRESET_OVERRIDES["cpu"].items() if not k.startswith(("attack.", "poison."))}
SCALES: Mapping[str, Scale] = {
    "cpu": Scale("cpu", ("mnist5k",), {**_CPU, "analysis.embedding.points": 1000}),
    "gpu": Scale("gpu", ("cifar10", "svhn_cropped"), {"data.per_class_limit": 4000}),
}
"""The grid's scales (see the module docstring)."""


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One run of the grid: its place (data set, variant, noise, seed) and its config."""

    dataset: str
    variant: str
    noise: float
    seed: int
    config: StudyConfig

    @property
    def name(self) -> str:
        return f"{self.variant}_noise{self.noise:g}_s{self.seed}"

    def run_dir(self, root: str) -> str:
        return os.path.join(root, self.dataset, self.name)


def shorten(config: StudyConfig, epochs: int) -> StudyConfig:
    """``config`` trained for ``epochs`` epochs, its MI, stealthiness and embedding epochs scaled to
    the shorter run (each ``max(1, round(e * epochs / E))``, repeats dropped)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    total = config.train.epochs

    def scaled(es):
        return tuple(sorted({min(epochs, max(1, round(e * epochs / total))) for e in es}))

    return override(config, {"train.epochs": epochs, "mi.epochs": scaled(config.mi.epochs),
                             "analysis.stealth.epochs": scaled(config.analysis.stealth.epochs),
                             "analysis.embedding.epochs": scaled(config.analysis.embedding.epochs)})


def _embedding_method() -> str:
    try:
        check_embedding("tsne")
        return "tsne"
    except ImportError:
        return "pca"


def paper_grid(scale: str = "cpu", preset_name: str = "default", *, seeds: Optional[Sequence[int]] = None,
               variants: Optional[Sequence[str]] = None, datasets: Optional[Sequence[str]] = None,
               epochs: Optional[int] = None, changes: Mapping[str, Any] = ()) -> list[GridRun]:
    """The grid's runs.

    Args:
      scale: a name of :data:`SCALES`.
      preset_name: the preset the runs start from ("default" or "reference"; any preset works).
      seeds: the seeds (default the scale's).
      variants: names of :data:`PAPER_VARIANTS` (default all).
      datasets: the data sets (default the scale's).
      epochs: train this many epochs instead (:func:`shorten`; e.g. one attack in a 10-minute device call).
      changes: dotted overrides applied after the scale's (a user's flags), before the grid's own
        fields (data set, attack, ratio, noise, seed), which they cannot change.

    Raises:
      ValueError: an unknown scale, variant or an empty selection.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; scales: {', '.join(SCALES)}")
    sc = SCALES[scale]
    variants = list(variants) if variants is not None else list(PAPER_VARIANTS)
    unknown = [v for v in variants if v not in PAPER_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; variants: {', '.join(PAPER_VARIANTS)}")
    seeds = list(seeds) if seeds is not None else list(sc.seeds)
    datasets = list(datasets) if datasets is not None else list(sc.datasets)
    if not (variants and seeds and datasets):
        raise ValueError("the grid is empty: give at least one variant, seed and data set")
    base = override(preset(preset_name), {**sc.for_preset(preset_name), **_GRID,
                                          "analysis.embedding.method": _embedding_method()})
    base = override(base, dict(changes))
    if epochs is not None:
        base = shorten(base, epochs)
    runs = []
    for dataset in datasets:
        for v in variants:
            attack, ratio = PAPER_VARIANTS[v]
            for noise in (MAIN_NOISE, *((LOW_NOISE,) if v in LOW_NOISE_VARIANTS else ())):
                for seed in seeds:
                    config = override(base, {"data.name": dataset, "attack.name": attack, "poison.ratio": ratio,
                                             "model.gamma_xt": noise, "model.gamma_ty": noise, "seed": seed})
                    runs.append(GridRun(dataset, v, noise, seed, config))
    return runs


def claim_run(run: GridRun, history: RunHistory, summary: Mapping[str, Any]) -> ClaimRun:
    """The claims' view of one finished grid run (its history and summary.json)."""
    config = run.config
    read = config.analysis.stealth.read
    st = (summary.get("stealth") or {}).get(read) or {}
    spec = REGISTRY[config.attack.name]
    mi = {q: h for q, h in history.mi.items() if q in ("xt", "ty", "xy")}
    groups = next(iter(mi.values())).groups if mi else ()  # every quantity estimates the same groups
    return ClaimRun(
        attack=config.attack.name, noise=run.noise, seed=run.seed, mi=mi, variant=run.variant,
        stealth=st.get("total"), stealth_se=st.get("total_se"), bounds=summary.get("bound_checks"),
        ratio=config.poison.ratio, num_classes=1 + sum(g.startswith("class_") for g in groups),
        clean_label=config.poison.clean_label or spec.clean_label,
        keep_label_fraction=config.poison.keep_label_fraction or spec.keep_label_fraction,
    )
