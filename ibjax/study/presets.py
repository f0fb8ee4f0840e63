"""Named configurations: ``default``, ``reference``, ``fast`` and ``cpu``.

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
  docs/measurements.md),
  and bfloat16 network compute.
- ``cpu``: a meaningful mnist5k run on 2 CPU cores in about a minute (the quickstart): small noisy
  CNN (Philox noise: half Threefry's cost on XLA:CPU), 8 epochs, light estimators on a bank of 2
  draws (4 draws cost more time and moved no finding), MI at epochs 1, 4 and 8. Measured times,
  with their hardware, date and command: docs/measurements.md.
"""

from __future__ import annotations

import dataclasses

from ibjax.mi import TY_REFERENCE, XT_CONFIG, XT_REFERENCE
from ibjax.models import ModelConfig
from ibjax.poison import REFERENCE_POISON, PoisonConfig
from ibjax.study.config import StudyConfig
from ibjax.train import TrainConfig

__all__ = ["PRESETS", "preset", "preset_names"]

# ibjax's estimator (held-out and validation splits, best critic) at light sizes, with standardised
# instead of rank-Gaussianised inputs: on 784 pixel coordinates the per-batch rank map costs several
# times the rest of the estimator on a CPU (docs/measurements.md, "Estimator inputs on MNIST pixels"),
# and the quickstart must stay near a minute.
_CPU_MI = dataclasses.replace(XT_CONFIG, epochs=30, batch_size=64, negatives=128, hidden=(64, 64), lr=1e-3, read_epochs=5,
                              preprocess="standardize")

PRESETS: dict[str, StudyConfig] = {
    "default": StudyConfig(),
    "reference": StudyConfig(
        poison=REFERENCE_POISON,
        trigger_rules="reference",
        train=TrainConfig(asr_on_all=True),
        xt=XT_REFERENCE,
        ty=TY_REFERENCE,
        feature_mode="fresh",
        stealth_read="train",
        stealth_normalise="per_epoch",
        stealth_classes=(1, 2, 3),
    ),
    "fast": StudyConfig(
        model=ModelConfig(dtype="bfloat16"),
        feature_mode="bank",
        bank_draws=4,
    ),
    "cpu": StudyConfig(
        dataset="mnist5k",
        attack="badnets",
        poison=PoisonConfig(ratio=0.1, target=0),
        model=ModelConfig(name="small_cnn", gamma_xt=0.4, gamma_ty=0.4, noise_generator="philox"),
        train=TrainConfig(epochs=8, batch_size=64, lr=0.05, schedule="cosine"),
        mi_epochs=(1, 4, 8),
        xt=_CPU_MI,
        ty=dataclasses.replace(_CPU_MI, lr=2e-3),
        mi_mode="offline",
        feature_mode="bank",
        bank_draws=2,
        stealth_epochs=(1, 4, 8),
        embed_epochs=(1, 8),
    ),
}


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def preset(name: str) -> StudyConfig:
    """The named preset; ValueError listing the names for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]
