"""What a run is made of: the fixed set-up and the evolving, checkpointed state.

- :class:`StudySetup`: everything fixed for a run once its data is loaded and its attack prepared
  (config, network, attack, poisoning plan, data sets on the device, the run's keys, the device
  mesh). Built once by :func:`ibjax.study.setup.build_setup`; never checkpointed (it is rebuilt
  identically from the config, on whatever devices the resumed run has).
- :class:`RunState`: the typed pytree that changes epoch by epoch and is exactly what a checkpoint
  holds: the network's train state, the learning-rate schedule, and the online critics with their
  pair buffers. :func:`ibjax.study.steps.run_epoch` maps one to the next.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from jax.sharding import Mesh

from ibjax import mi as ibmi
from ibjax.parallel import put_replicated
from ibjax.pipeline import DeviceData
from ibjax.poison import PoisonPlan
from ibjax.quantities import QUANTITIES
from ibjax.study.config import StudyConfig
from ibjax.train import PlateauState, TrainState, create_train_state, plateau_init
from ibjax.triggers import Attack

__all__ = ["RunKeys", "StudySetup", "OnlineCritics", "RunState", "init_run_state"]


@struct.dataclass
class RunKeys:
    """The run's PRNG keys, all derived from its seed (``split(PRNGKey(seed), 6)``).

    Attributes:
      plan: the poisoning plan's random choices; trigger: per-sample trigger randomness;
      init: network and critic initialisation; train: per-epoch shuffles and noise (``fold_in(train,
      epoch)``); mi: the MI estimators (``fold_in(mi, epoch)``); clean_model: what an attack computes
      against a clean model first (PGD, TrojanNN).
    """

    plan: jax.Array
    trigger: jax.Array
    init: jax.Array
    train: jax.Array
    mi: jax.Array
    clean_model: jax.Array

    @classmethod
    def from_seed(cls, seed: int) -> "RunKeys":
        return cls(*jax.random.split(jax.random.PRNGKey(seed), 6))


@dataclasses.dataclass(frozen=True, eq=False)
class StudySetup:
    """Everything fixed for one run (see the module docstring).

    Attributes:
      config: the run's configuration.
      model: the Flax network (static: hashes by value).
      attack: the attack with its prepared pattern (static: hashes by value).
      plan: the poisoning plan and the MI groups (``plan.group_masks`` bool[G, N]).
      train_data: the poisoned training set on the device.
      clean_test, triggered_test: the clean test set and the triggered one (ASR).
      class_names: the data set's class names.
      keys: the run's keys.
      image_shape: (H, W, C).
      t_dim: size of the representation T; num_classes: K.
      mesh: the :mod:`ibjax.parallel` mesh the run is data-parallel over (data sets and state
        replicated, batches split over ``"data"``, MI groups over every device), or None: the
        default device, no sharding.
    """

    config: StudyConfig
    model: nn.Module
    attack: Attack
    plan: PoisonPlan
    train_data: DeviceData
    clean_test: DeviceData
    triggered_test: DeviceData
    class_names: tuple[str, ...]
    keys: RunKeys
    image_shape: tuple[int, ...]
    t_dim: int
    num_classes: int
    mesh: Optional[Mesh] = None

    @property
    def x_dim(self) -> int:
        h, w, c = self.image_shape
        return h * w * c

    @property
    def feature_sizes(self) -> dict[str, int]:
        """Sizes of the network's features (:data:`ibjax.quantities.FEATURES`): ``{"x": H*W*C, "t": D, "y": K}``."""
        return {"x": self.x_dim, "t": self.t_dim, "y": self.num_classes}

    @property
    def num_groups(self) -> int:
        return len(self.plan.group_names)

    @property
    def steps_per_epoch(self) -> int:
        return self.train_data.size // self.config.train.batch_size

    @property
    def total_steps(self) -> int:
        return self.config.train.epochs * self.steps_per_epoch


@struct.dataclass
class OnlineCritics:
    """Critics trained alongside the network (``mi.mode`` online/both), every leaf with a group axis G:
    a critic and a pair buffer per online quantity of :data:`ibjax.quantities.QUANTITIES` (named
    fields, the layout checkpoints hold).

    Attributes:
      xt, ty: stacked critic states of I(X;T) and I(T;Y_pred).
      xt_pairs, ty_pairs: per-group ring buffers of the most recent pairs.
    """

    xt: ibmi.CriticState
    ty: ibmi.CriticState
    xt_pairs: ibmi.PairBuffer
    ty_pairs: ibmi.PairBuffer


@struct.dataclass
class RunState:
    """The checkpointed state of a run after ``epoch`` training epochs.

    Attributes:
      epoch: int32 scalar, training epochs completed.
      train: the network's :class:`~ibjax.train.TrainState` (its ``lr`` is the schedule's base rate).
      plateau: the reduce-on-plateau schedule's state (unused by other schedules).
      online: the online critics, or None when ``mi.mode`` is offline.
    """

    epoch: jax.Array
    train: TrainState
    plateau: PlateauState
    online: Optional[OnlineCritics] = None


def init_run_state(setup: StudySetup) -> RunState:
    """The state before the first epoch: network and (online) critics initialised from the run's keys,
    replicated over the set-up's mesh (the same values on any number of devices)."""
    cfg = setup.config
    init = jax.jit(create_train_state, static_argnums=(1, 2, 3))
    train_state = init(setup.keys.init, setup.model, setup.image_shape, cfg.train)
    online = None
    if cfg.mi.online:
        g, k = setup.num_groups, setup.keys.init
        fields = {}
        for i, (name, q) in enumerate(QUANTITIES.items()):  # the registry's index: keys stable whatever is chosen
            if not q.online:
                continue
            mi_cfg = getattr(cfg.mi, name)
            fields[name] = ibmi.init(jax.random.fold_in(k, 1 + i), g, *q.pair(setup.feature_sizes), mi_cfg)
            fields[f"{name}_pairs"] = ibmi.buffer_init(g, *q.pair(setup.feature_sizes), mi_cfg)
        online = OnlineCritics(**fields)
    state = RunState(epoch=jnp.zeros((), jnp.int32), train=train_state, plateau=plateau_init(), online=online)
    return put_replicated(state, setup.mesh)
