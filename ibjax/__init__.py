"""ibjax: the information-bottleneck analysis of backdoor training, in JAX.

Modules, one concern each: ``data`` (data sets), ``triggers`` (attacks as pure jnp transforms, one
registry), ``poison`` (poisoning plans and MI sample groups), ``pipeline`` (on-device batches),
``models`` (noisy Flax CNNs), ``rng`` (random draws that compile fast on CPU), ``schedules`` (the
plateau rule of the network and the critics), ``train`` (pure train/eval steps), ``mi`` (critics,
bounds and batched InfoNCE estimation with held-out reads, standard errors and convergence verdicts;
``mi.groundtruth``: MI tasks with known truth), ``metrics`` (stealthiness, clustering, run
comparison), ``fields`` (typed config fields: the one value parser, validation, dotted overrides),
``records`` (typed run records: epoch records, MI histories, the run history), ``parallel`` (meshes and shardings), ``checkpoint``, ``plots``, ``study`` (one run of the
protocol, populations of runs), ``cli`` (the study's command line) and ``runtime`` (CPU tuning of the
entry points' processes).

``__all__`` is the user's API: the estimators and their configs, the bounds, the triggers and
:func:`get_attack`, poisoning plans, data sets, models, :class:`StudyConfig` and :func:`run_study`,
and the metrics. Everything else stays in its module (``ibjax.pipeline.gather_batch``,
``ibjax.mi.CriticState``, ...). ``plots``, ``study``, ``checkpoint``, ``cli``, ``runtime`` and ``defenses`` load on
first use, and so do ``StudyConfig`` and ``run_study`` (from ``study``), so ``import ibjax`` stays
light.
"""

from ibjax import data, fields, metrics, mi, models, parallel, pipeline, poison, records, rng, schedules, train, triggers
from ibjax.data import DataUnavailableError, Dataset, load_dataset
from ibjax.metrics import (
    compare_runs,
    group_silhouettes,
    pca_2d,
    silhouette_score,
    size_matched_comparisons,
    stealth_bootstrap,
    stealth_distance,
    stealthiness,
)
from ibjax.mi import (
    TY_CONFIG,
    TY_REFERENCE,
    XT_CONFIG,
    XT_REFERENCE,
    MIConfig,
    MIResult,
    estimate_mi,
    estimate_mi_groups,
    estimate_mi_sampled,
)
from ibjax.mi.bounds import dv, infonce, infonce_all_pairs, nwj
from ibjax.models import ModelConfig, PreActResNet18, ResNet18, SmallCNN, VGG16, make_model
from ibjax.poison import REFERENCE_POISON, PoisonConfig, PoisonPlan, make_poison_plan
from ibjax.train import TrainConfig
from ibjax.triggers import (
    ATTACKS,
    Attack,
    Trigger,
    adaptive_blend,
    badnets,
    blend,
    bpp,
    ftrojan,
    get_attack,
    grond,
    label_consistent,
    low_frequency,
    sig,
    trojannn,
    wanet,
)

__version__ = "0.1.0"

_LAZY_MODULES = ("plots", "study", "checkpoint", "cli", "runtime", "defenses")
# Names of lazily loaded modules, resolved on first use: the study stack imports orbax and matplotlib.
_LAZY_NAMES = {"StudyConfig": "ibjax.study", "run_study": "ibjax.study"}

__all__ = [
    # MI estimation (nats)
    "MIConfig", "MIResult", "XT_CONFIG", "TY_CONFIG", "XT_REFERENCE", "TY_REFERENCE",
    "estimate_mi", "estimate_mi_groups", "estimate_mi_sampled",
    "infonce", "infonce_all_pairs", "nwj", "dv",
    # attacks and poisoning
    "Attack", "Trigger", "ATTACKS", "get_attack",
    "badnets", "blend", "adaptive_blend", "wanet", "sig", "ftrojan", "bpp", "trojannn", "label_consistent",
    "low_frequency", "grond",
    "PoisonConfig", "PoisonPlan", "REFERENCE_POISON", "make_poison_plan",
    # data, networks, training, studies
    "Dataset", "DataUnavailableError", "load_dataset",
    "ModelConfig", "SmallCNN", "ResNet18", "PreActResNet18", "VGG16", "make_model", "TrainConfig",
    "StudyConfig", "run_study",
    # metrics
    "stealthiness", "stealth_distance", "stealth_bootstrap", "size_matched_comparisons", "compare_runs",
    "silhouette_score", "group_silhouettes", "pca_2d",
    "__version__",
]


def __getattr__(name):
    # matplotlib (plots), orbax (checkpoint) and the study stack load on first use.
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f"ibjax.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'ibjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_NAMES))
