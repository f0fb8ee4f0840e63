"""The run's pure steps: one training epoch, MI of every group, clustering of the representation.

:func:`run_epoch` maps a :class:`~ibjax.study.state.RunState` after epoch e to the state after epoch
e + 1 and that epoch's metrics: training (with the online critics, when enabled, updated in the
same jitted step), exact evaluation, and the learning-rate schedule. It reads nothing but its
arguments and writes nothing: recording (files, checkpoints, logs) is the runner's layer. The input
state's buffers are donated to the jitted step, so use the returned state.

Every key derives from the run's keys and the epoch, so an epoch computed after a resume is the
same epoch an uninterrupted run computes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ibjax import metrics as ibmetrics
from ibjax import mi as ibmi
from ibjax.mi.estimator import group_keys
from ibjax.parallel import pad_groups, pad_rows, put_groups, put_replicated, to_host
from ibjax.pipeline import DeviceData, gather_batch
from ibjax.poison import group_index_table
from ibjax.progress import Progress
from ibjax.study.state import OnlineCritics, RunState, StudySetup
from ibjax.train import (
    TrainConfig,
    epoch_loop,
    evaluate_attack,
    extract_features,
    plateau_update,
    step_statics,
    summarise_epoch,
    train_step,
)

__all__ = ["run_epoch", "FreshPairs", "estimate_network_mi", "estimate_mi_on_mesh", "representation_clustering",
           "QUANTITY_LABELS"]

QUANTITY_LABELS = {"xt": "I(X;T)", "ty": "I(T;Y_pred)"}


def _pair(quantity: str, x, t, logits):
    """(a, b) of a quantity: I(X;T) pairs a = T with b = X; I(T;Y_pred) pairs a = Y_pred with b = T."""
    return (t, x) if quantity == "xt" else (logits, t)


def _tracked_step(carry, data: DeviceData, index, key, masks, *, model, trigger, config: TrainConfig,
                  total_steps: int, xt: ibmi.MIConfig, ty: ibmi.MIConfig):
    """One training step and, on the same batch's features, one step of every online critic.

    ``carry`` = (TrainState, OnlineCritics); ``masks`` bool[G, N] are the MI groups. Each group's
    critic first reads the batch's member pairs it has not trained on, then steps on its buffer
    (:func:`ibjax.mi.update_buffered`); the read sums go into the step's metrics.
    """
    train_state, online = carry
    train_state, m = train_step(train_state, data, index, key, model=model, trigger=trigger, config=config,
                                total_steps=total_steps, return_features=True)
    x, t, logits = m.pop("features")
    member = masks[:, index]
    new = {}
    for q, cfg, k in (("xt", xt, jax.random.fold_in(key, 7)), ("ty", ty, jax.random.fold_in(key, 8))):
        a, b = _pair(q, x, t, logits)
        critic, pairs, est, rows = ibmi.update_buffered(getattr(online, q), getattr(online, f"{q}_pairs"), a, b, member,
                                                        k, cfg)
        new[q], new[f"{q}_pairs"] = critic, pairs
        m[f"{q}_online_sum"] = est * rows
        m[f"{q}_online_rows"] = rows
    return (train_state, OnlineCritics(**new)), m


_STATIC = ("model", "trigger", "config", "total_steps")
_train_step_jit = jax.jit(train_step, static_argnames=(*_STATIC, "return_features"), donate_argnums=(0,))
_tracked_step_jit = jax.jit(_tracked_step, static_argnames=(*_STATIC, "xt", "ty"), donate_argnums=(0,))


def run_epoch(state: RunState, setup: StudySetup, *,
              progress: Optional[Callable[[int, int], None]] = None) -> tuple[RunState, dict]:
    """Train one epoch, evaluate, step the schedule: ``(state after epoch e) -> (state after e + 1, metrics)``.

    Args:
      state: the run state (its buffers are donated; use the returned one).
      setup: the run's fixed set-up.
      progress: optional ``(steps_done, steps_total)`` callable after each training step.

    Returns:
      The new state and the epoch's metrics: ``epoch``, ``train_accuracy``, ``train_loss`` (nats),
      ``class_loss`` (per training label, nats), ``lr`` / ``lr_last`` (the rates the first and last
      steps used), ``test_accuracy``, ``test_loss`` (nats), ``asr``, and with online critics
      ``online`` = {"xt": f32[G] list, "ty": [...]}: each group's mean read (nats) on the epoch's
      new pairs.

    Raises:
      FloatingPointError: the training loss is not finite.
    """
    cfg, mesh = setup.config, setup.mesh
    epoch = int(state.epoch) + 1
    key = jax.random.fold_in(setup.keys.train, epoch)
    step_config, total_steps = step_statics(cfg.train, setup.total_steps)
    statics = dict(model=setup.model, trigger=setup.attack.train_trigger, config=step_config, total_steps=total_steps)
    if state.online is not None:
        masks = put_replicated(np.asarray(setup.plan.group_masks), mesh) if mesh is not None else jnp.asarray(
            setup.plan.group_masks)
        step = functools.partial(_tracked_step_jit, masks=masks, xt=cfg.xt, ty=cfg.ty, **statics)
        carry = (state.train, state.online)
    else:
        step = functools.partial(_train_step_jit, return_features=False, **statics)
        carry = state.train
    carry, totals = epoch_loop(step, carry, setup.train_data, key, batch_size=cfg.train.batch_size, progress=progress,
                               mesh=mesh)
    train_state, online = carry if state.online is not None else (carry, None)
    record = {"epoch": epoch, **summarise_epoch(totals)}
    ev = evaluate_attack(train_state.variables, setup.clean_test, setup.triggered_test, jax.random.fold_in(key, 1),
                         model=setup.model, trigger=setup.attack.test_trigger, target=setup.plan.target,
                         config=cfg.train, mesh=mesh)
    record.update(ev)
    plateau = state.plateau
    if cfg.train.schedule == "plateau":
        plateau, lr = plateau_update(plateau, train_state.lr, ev["test_loss"], cfg.train)
        train_state = train_state.replace(lr=lr)
    if online is not None:
        reads = {}
        for q, mi_cfg in (("xt", cfg.xt), ("ty", cfg.ty)):
            est = np.asarray(totals[f"{q}_online_sum"]) / np.maximum(np.asarray(totals[f"{q}_online_rows"]), 1)
            online = online.replace(**{q: ibmi.end_epoch(getattr(online, q), jnp.asarray(est, jnp.float32), mi_cfg)})
            reads[q] = [float(v) for v in est]
        record["online"] = reads
    new = RunState(epoch=put_replicated(jnp.asarray(epoch, jnp.int32), mesh), train=train_state,
                   plateau=put_replicated(plateau, mesh), online=put_replicated(online, mesh))
    return new, record


@dataclasses.dataclass(frozen=True)
class FreshPairs:
    """Pair source of the MI estimator: a fresh noise draw of the network at every critic step (the
    reference's behaviour). Hashes by value, so the estimator compiles once per (network, trigger,
    quantity).

    Called as ``(shared, index_row int32[M], positions int32[B], key) -> (a f32[B, da], b f32[B, db])``
    with ``shared = (variables, data)``: the pairs of the samples ``index_row[positions]``.
    """

    model: nn.Module
    trigger: Any
    quantity: str

    def __call__(self, shared, index_row, positions, key):
        variables, data = shared
        x, _, _ = gather_batch(data, index_row[positions], self.trigger)
        logits, t = self.model.apply(variables, x, train=False, rngs={"noise": key})
        return _pair(self.quantity, x.reshape(x.shape[0], -1), t, logits)


def estimate_network_mi(key: jax.Array, variables: dict, setup: StudySetup, *, progress: bool = False,
                        label: str = "") -> dict:
    """I(X;T) and I(T;Y_pred) of the network ``variables`` for every group of the run, one batched
    estimator call per quantity (:func:`ibjax.mi.estimate_mi_sampled`).

    Pairs are drawn per the config's ``feature_mode``: a fresh noise draw per critic step, or a bank
    of ``bank_draws`` draws per sample computed once here.

    Returns:
      ``{"xt": {group: record}, "ty": {group: record}}`` with each record as
      :meth:`ibjax.mi.MIResult.to_dict` gives one group (nats).
    """
    cfg, plan, data, mesh = setup.config, setup.plan, setup.train_data, setup.mesh
    index, valid = group_index_table(plan.group_masks)
    k_xt, k_ty, k_bank = jax.random.split(key, 3)
    dims = {"xt": (setup.t_dim, setup.x_dim), "ty": (setup.num_classes, setup.t_dim)}
    configs = {"xt": (cfg.xt, k_xt), "ty": (cfg.ty, k_ty)}
    if cfg.feature_mode == "bank":
        used = np.unique(index[valid])
        row_of = np.zeros(data.size, np.int32)
        row_of[used] = np.arange(len(used))
        draws = [extract_features(variables, data, used, jax.random.fold_in(k_bank, r), model=setup.model,
                                  trigger=setup.attack.train_trigger, mesh=mesh) for r in range(cfg.bank_draws)]
        x = draws[0][0]
        t_bank = jnp.stack([d[1] for d in draws], axis=1)
        y_bank = jnp.stack([d[2] for d in draws], axis=1)
        del draws
        shared = {"xt": (t_bank, x), "ty": (y_bank, t_bank)}
        sources = {q: (ibmi.bank_pairs, shared[q], row_of[index]) for q in ("xt", "ty")}
    else:
        sources = {q: (FreshPairs(setup.model, setup.attack.train_trigger, q), (variables, data), index)
                   for q in ("xt", "ty")}
    out = {}
    for q in ("xt", "ty"):
        mi_cfg, k = configs[q]
        sample_fn, shared, group_data = sources[q]
        bar = Progress(f"{label}{QUANTITY_LABELS[q]} estimator", mi_cfg.total_epochs, "epoch", enabled=progress)
        res = estimate_mi_on_mesh(k, sample_fn, shared, group_data, valid, *dims[q], config=mi_cfg, mesh=mesh,
                                  group_names=plan.group_names, progress=bar if progress else None)
        bar.close()
        out[q] = per_group(res, plan.group_names)
    return out


def estimate_mi_on_mesh(key: jax.Array, sample_fn, shared, group_data, valid: np.ndarray, da: int, db: int, *,
                        config: ibmi.MIConfig, mesh=None, group_names=None, progress=None) -> ibmi.MIResult:
    """:func:`ibjax.mi.estimate_mi_sampled` with the group axis split over every device of ``mesh``.

    The G groups are padded to a multiple of the device count with copies of group 0 (its key,
    samples and index row: they pass the estimator's size checks and leave its scan lengths
    unchanged), and the per-group inputs (keys, ``group_data``) are placed with
    :func:`ibjax.parallel.group_sharding`; ``shared`` (a bank, or the network and data) must be
    replicated on the mesh. Each group's critic reads only its own row, so XLA keeps the estimator
    partitioned over groups with no communication, and every group's result is the one it has on
    one device (group g keeps key ``split(key, G)[g]``). Placed over several devices, the groups are
    vmapped (the estimator's ``group_batch="auto"`` sees the sharding); on one device, as without a
    mesh (the plain call), they run in a loop on a CPU.

    Args:
      key: one PRNG key (split into G) or G keys, raw (``uint32[2]`` / ``[G, 2]``) or typed
        (``jax.random.key``).
      group_data: host arrays with leading axis G (index tables).
      valid: bool[G, M].

    Returns:
      :class:`ibjax.mi.MIResult` of the G real groups, as host (NumPy) arrays on every process.
    """
    valid = np.asarray(valid, bool)
    g = valid.shape[0]
    if mesh is None:
        res = ibmi.estimate_mi_sampled(key, sample_fn, shared, jax.tree.map(jnp.asarray, group_data), valid, da, db,
                                       config=config, group_names=group_names, progress=progress)
        return jax.tree.map(np.asarray, res)
    keys = np.asarray(jax.random.key_data(group_keys(key, g)))  # raw [G, 2]: padded and placed as host rows
    gp = pad_groups(g, mesh)
    names = None if group_names is None else tuple(group_names) + (group_names[0],) * (gp - g)
    res = ibmi.estimate_mi_sampled(
        put_groups(pad_rows(keys, gp), mesh), sample_fn, shared,
        put_groups(jax.tree.map(lambda x: pad_rows(np.asarray(x), gp), group_data), mesh), pad_rows(valid, gp),
        da, db, config=config, group_names=names, progress=progress)
    return jax.tree.map(lambda x: to_host(x)[:g], res)


def per_group(res: ibmi.MIResult, names) -> dict:
    """``{group name: record}`` from a batched result (one record per group, as mi.json stores it)."""
    return res.to_dict(list(names))


def representation_clustering(key: jax.Array, variables: dict, setup: StudySetup, points: int) -> tuple[dict, dict]:
    """Silhouette scores of T per group (target class split in clean and backdoor) and a 2-D PCA
    embedding of ``points`` samples. Returns ``(silhouettes {group: float}, embedding arrays)``."""
    data, plan = setup.train_data, setup.plan
    idx = np.arange(data.size)
    _, t, _ = extract_features(variables, data, idx, key, model=setup.model, trigger=setup.attack.train_trigger,
                               mesh=setup.mesh)
    if setup.mesh is not None:  # small host-side statistics: on one device, not as programs over the mesh
        t = jnp.asarray(to_host(t))
    sil = ibmetrics.group_silhouettes(t, jnp.asarray(plan.labels), jnp.asarray(plan.poisoned), plan.target,
                                      num_classes=setup.num_classes)
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    sub = np.sort(rng.choice(len(idx), size=min(points, len(idx)), replace=False))
    emb = np.asarray(ibmetrics.pca_2d(t[sub]))
    return {k: float(v) for k, v in sil.items()}, {"embedding": emb, "labels": plan.labels[sub],
                                                    "poisoned": plan.poisoned[sub]}
