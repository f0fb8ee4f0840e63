"""ibjax: the information-bottleneck analysis of backdoor training, in JAX.

Modules, one concern each: ``data`` (data sets), ``triggers`` (attacks as pure jnp transforms),
``poison`` (poisoning plans and MI sample groups), ``pipeline`` (on-device batches), ``models``
(noisy Flax CNNs), ``train`` (pure train/eval steps), ``critics`` / ``bounds`` / ``mi`` (batched
InfoNCE estimation), ``metrics`` (stealthiness, silhouette), ``checkpoint``, ``plots`` and ``study``
(one run of the protocol). The names below are the public API.
"""

from ibjax import bounds, critics, data, metrics, mi, models, pipeline, poison, train, triggers
from ibjax.bounds import dv, infonce, infonce_all_pairs, nwj
from ibjax.critics import concat_critic, concat_critic_scores, init_concat_critic, separable_critic_scores
from ibjax.data import DataUnavailableError, Dataset, load_dataset
from ibjax.metrics import group_silhouettes, pca_2d, silhouette_score, stealth_distance, stealthiness
from ibjax.mi import (
    TY_CONFIG,
    XT_CONFIG,
    CriticState,
    MIConfig,
    MIResult,
    PairBuffer,
    estimate_mi,
    estimate_mi_groups,
    estimate_mi_sampled,
)
from ibjax.models import ModelConfig, PreActResNet18, ResNet18, SmallCNN, VGG16, make_model
from ibjax.pipeline import DeviceData, gather_batch, put_test_data, put_train_data
from ibjax.poison import PoisonConfig, PoisonPlan, group_index_table, make_poison_plan
from ibjax.train import TrainConfig, TrainState, create_train_state, eval_step, evaluate_attack, train_step
from ibjax.triggers import (
    ATTACKS,
    Attack,
    StaticArray,
    adaptive_blend,
    badnets,
    blend,
    bpp,
    ftrojan,
    get_attack,
    label_consistent,
    low_frequency,
    low_frequency_uap,
    pgd_l2,
    sig,
    trojannn,
    trojannn_pattern,
    wanet,
)

__version__ = "0.1.0"


def __getattr__(name):
    # plots (matplotlib) and study (everything) load on first use, keeping `import ibjax` light.
    if name in ("plots", "study", "checkpoint"):
        import importlib

        return importlib.import_module(f"ibjax.{name}")
    raise AttributeError(f"module 'ibjax' has no attribute {name!r}")
