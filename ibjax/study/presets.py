"""Named configurations: ``default``, ``reference``, ``fast`` and ``cpu``, each a set of overrides of
:class:`~ibjax.study.config.StudyConfig`'s defaults (as the flax examples' ``configs/``).

- ``default``: :class:`~ibjax.study.config.StudyConfig`'s own defaults: SPEC.md's protocol (CIFAR-10,
  ResNet-18, 120 epochs, MI at 9 epochs, the reference's estimator sizes) with ibjax's estimator
  (held-out reads with standard errors and convergence verdicts) and ibjax's trigger details.
- ``reference``: the authors' published code exactly, wherever ibjax departs from it (estimator
  with no held-out split, their poisoning and trigger details, ASR over all test images, the
  stealthiness metric on the training read over their three tracked clean classes). Use it to
  reproduce the paper's numbers.
- ``fast``: the reference protocol with what a GPU run wants: MI on a cached bank of 4 noise draws
  per sample instead of a fresh network pass per critic step (``experiments.feature_modes``: with
  R >= 4 draws the held-out reads stay within the seed-to-seed spread of fresh draws, see
  docs/measurements.md), and bfloat16 network compute.
- ``cpu``: a meaningful mnist5k run on 2 CPU cores in about a minute (the quickstart): small noisy
  CNN (Philox noise: half Threefry's cost on XLA:CPU), 8 epochs, light estimators on a bank of 2
  draws (4 draws cost more time and moved no finding), MI at epochs 1, 4 and 8. Measured times,
  with their hardware, date and command: docs/measurements.md.
"""

from __future__ import annotations

from typing import Any, Mapping

from ibjax.fields import override
from ibjax.mi import TY_REFERENCE, XT_REFERENCE
from ibjax.poison import REFERENCE_POISON
from ibjax.study.config import StudyConfig

__all__ = ["PRESETS", "PRESET_OVERRIDES", "preset", "preset_names"]

# ibjax's estimator (held-out and validation splits, best critic, the Gaussian candidate) at light
# sizes, with standardised instead of rank-Gaussianised inputs: on 784 pixel coordinates the
# per-batch rank map costs several times the rest of the estimator on a CPU (docs/measurements.md,
# "Estimator inputs on MNIST pixels"), and the quickstart must stay near a minute. The trained
# critic is the concat one of (64, 64) for every quantity: on the detection population's networks
# the separable critic of (64, 64) read each class's I(X;T) with 28% more network-to-network scatter
# and the target class's departure smaller, which took the MI monitor's I(X;T) signal to chance
# (docs/detection.md, "The estimator").
_CPU_MI = {"protocol.epochs": 30, "protocol.batch_size": 64, "protocol.negatives": 128, "critic.family": "concat",
           "critic.hidden": (64, 64), "optimiser.lr": 1e-3, "optimiser.weight_decay": 1e-4, "protocol.read_epochs": 5,
           "critic.preprocess": "standardize"}

PRESET_OVERRIDES: dict[str, Mapping[str, Any]] = {
    "default": {},
    "reference": {
        "poison": REFERENCE_POISON,
        "attack.trigger_rules": "reference",
        "train.asr_on_all": True,
        "model.weight_init": "authors",
        "mi.xt": XT_REFERENCE,
        "mi.ty": TY_REFERENCE,
        "mi.xy": XT_REFERENCE,  # the authors estimate no I(X;Y_pred): their I(X;T) estimator, the same X side
        "mi.features": "fresh",
        "analysis.stealth.read": "train",
        "analysis.stealth.normalise": "per_epoch",
        "analysis.stealth.classes": (1, 2, 3),
    },
    "fast": {
        "model.dtype": "bfloat16",
        "mi.features": "bank",
        "mi.bank_draws": 4,
    },
    "cpu": {
        "data.name": "mnist5k",
        "attack.name": "badnets",
        "poison.ratio": 0.1,
        "poison.target": 0,
        "model.name": "small_cnn",
        "model.gamma_xt": 0.4,
        "model.gamma_ty": 0.4,
        "model.noise_generator": "philox",
        "train.epochs": 8,
        "train.batch_size": 64,
        "train.lr": 0.05,
        "train.schedule": "cosine",
        "mi.epochs": (1, 4, 8),
        "mi.mode": "offline",
        "mi.features": "bank",
        "mi.bank_draws": 2,
        **{f"mi.xt.{k}": v for k, v in _CPU_MI.items()},
        **{f"mi.ty.{k}": v for k, v in {**_CPU_MI, "optimiser.lr": 2e-3}.items()},
        **{f"mi.xy.{k}": v for k, v in _CPU_MI.items()},
        "analysis.stealth.epochs": (1, 4, 8),
        "analysis.embedding.epochs": (1, 8),
    },
}
"""Each preset as dotted-path overrides of ``StudyConfig()`` (a section's path with a whole section)."""

PRESETS: dict[str, StudyConfig] = {name: override(StudyConfig(), changes) for name, changes in PRESET_OVERRIDES.items()}


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def preset(name: str) -> StudyConfig:
    """The named preset; ValueError listing the names for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
