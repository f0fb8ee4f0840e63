"""ibjax: the information-bottleneck analysis of backdoor training, in JAX.

Modules, one concern each: ``data`` (data sets), ``triggers`` (attacks as pure jnp transforms, one
registry), ``poison`` (poisoning plans and MI sample groups), ``pipeline`` (on-device batches),
``models`` (noisy Flax CNNs), ``rng`` (random draws that compile fast on CPU), ``train`` (pure
train/eval steps), ``critics`` / ``bounds`` / ``mi`` (batched InfoNCE estimation with held-out reads,
standard errors and convergence verdicts), ``groundtruth`` (MI tasks with known truth), ``metrics``
(stealthiness, clustering, run comparison), ``parallel`` (meshes and shardings), ``checkpoint``,
``plots``, ``study`` (one run of the protocol, populations of runs) and ``cli``. ``__all__`` lists the
public API; ``plots``, ``study``, ``checkpoint`` and ``cli`` load on first use, so ``import ibjax``
stays light.
"""

from ibjax import bounds, critics, data, groundtruth, metrics, mi, models, parallel, pipeline, poison, rng, train, triggers
from ibjax.bounds import dv, infonce, infonce_all_pairs, nwj
from ibjax.critics import concat_critic, concat_critic_scores, init_concat_critic, init_critic, separable_critic_scores
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
    CriticState,
    MIConfig,
    MIResult,
    PairBuffer,
    estimate_mi,
    estimate_mi_groups,
    estimate_mi_sampled,
    rank_gaussianize,
    resolve_config,
    select_by_validation,
)
from ibjax.models import ModelConfig, PreActResNet18, ResNet18, SmallCNN, VGG16, make_model
from ibjax.parallel import make_mesh
from ibjax.pipeline import DeviceData, gather_batch, put_test_data, put_train_data
from ibjax.poison import REFERENCE_POISON, PoisonConfig, PoisonPlan, group_index_table, make_poison_plan
from ibjax.train import TrainConfig, TrainState, create_train_state, eval_step, evaluate_attack, train_step
from ibjax.triggers import (
    ATTACKS,
    REGISTRY,
    Attack,
    StaticArray,
    Trigger,
    adaptive_blend,
    badnets,
    blend,
    bpp,
    ftrojan,
    get_attack,
    label_consistent,
    load_pattern,
    low_frequency,
    low_frequency_uap,
    pgd_l2,
    reference_attack_overrides,
    sig,
    trojannn,
    trojannn_pattern,
    wanet,
)

__version__ = "0.1.0"

_LAZY = ("plots", "study", "checkpoint", "cli")

__all__ = [
    # modules
    "bounds", "critics", "data", "groundtruth", "metrics", "mi", "models", "parallel", "pipeline", "poison",
    "rng", "train", "triggers", *_LAZY,
    # MI estimation
    "MIConfig", "MIResult", "XT_CONFIG", "TY_CONFIG", "XT_REFERENCE", "TY_REFERENCE", "resolve_config",
    "estimate_mi", "estimate_mi_groups", "estimate_mi_sampled", "select_by_validation", "CriticState", "PairBuffer",
    "rank_gaussianize",
    "infonce", "infonce_all_pairs", "nwj", "dv", "concat_critic", "concat_critic_scores", "separable_critic_scores",
    "init_critic", "init_concat_critic",
    # attacks and poisoning
    "Attack", "Trigger", "StaticArray", "ATTACKS", "REGISTRY", "get_attack", "reference_attack_overrides",
    "load_pattern", "badnets", "blend", "adaptive_blend", "wanet", "sig", "ftrojan", "bpp", "trojannn",
    "trojannn_pattern", "label_consistent", "pgd_l2", "low_frequency", "low_frequency_uap",
    "PoisonConfig", "PoisonPlan", "REFERENCE_POISON", "make_poison_plan", "group_index_table",
    # data, networks, training
    "Dataset", "DataUnavailableError", "load_dataset", "DeviceData", "gather_batch", "put_train_data",
    "put_test_data", "ModelConfig", "SmallCNN", "ResNet18", "PreActResNet18", "VGG16", "make_model",
    "TrainConfig", "TrainState", "create_train_state", "train_step", "eval_step", "evaluate_attack", "make_mesh",
    # metrics
    "stealthiness", "stealth_distance", "stealth_bootstrap", "size_matched_comparisons", "compare_runs",
    "silhouette_score", "group_silhouettes", "pca_2d",
    "__version__",
]


def __getattr__(name):
    # matplotlib (plots), orbax (checkpoint) and the study stack load on first use.
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"ibjax.{name}")
    raise AttributeError(f"module 'ibjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
