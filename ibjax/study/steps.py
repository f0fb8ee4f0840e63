"""The study's pure steps, written once over a population (a single run is a population of one).

:func:`run_epoch` maps a stacked :class:`~ibjax.study.state.RunState` (leading member axis R) after
epoch e to the state after epoch e + 1 and each member's metrics: training (with the online critics,
when enabled, updated in the same jitted step), exact evaluation, and the learning-rate schedule.
:func:`estimate_network_mi` estimates every member's groups; :func:`representation_clustering` one
member's clustering of T. They read nothing but their arguments and write nothing: recording
(files, checkpoints, logs) is the runner's layer. The input state's buffers are donated to the
jitted step, so use the returned state.

Each step is the per-member function of :mod:`ibjax.train` (or :mod:`ibjax.mi`) ``vmap``-ed over the
member axis. Every member uses exactly its own keys (``fold_in`` of its seed's keys with the epoch
and step), its own shuffles and its own plan, and batch norm sees that member's batch only, so a
member's results equal the same run made alone up to float rounding; and every key derives from the
run's keys and the epoch, so an epoch computed after a resume is the epoch an uninterrupted run
computes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ibjax import metrics as ibmetrics
from ibjax import mi as ibmi
from ibjax.defenses.lipschitz import abi_reset
from ibjax.mi.estimator import group_keys
from ibjax.models import with_noise_levels
from ibjax.parallel import pad_batch_columns, pad_groups, pad_rows, put_batch, put_groups, put_members, \
    put_replicated, to_host
from ibjax.pipeline import DeviceData, epoch_batches, gather_batch, test_batches
from ibjax.poison import group_index_table
from ibjax.progress import Progress
from ibjax.quantities import QUANTITIES
from ibjax.study.population import PopulationSetup, member_of
from ibjax.study.state import OnlineCritics, RunState
from ibjax.train import (
    TrainConfig,
    eval_step,
    features_step,
    plateau_update,
    step_keys,
    step_statics,
    summarise_epoch,
    train_step,
)

__all__ = ["run_epoch", "evaluate_members", "evaluate_attack_members", "population_train_step",
           "population_tracked_step", "population_eval_step", "population_features_step", "FreshPairs",
           "PopulationBank", "population_bank", "estimate_network_mi", "estimate_mi_on_mesh", "per_group",
           "representation_clustering", "mi_configs", "population_features"]


def mi_configs(config, online: bool = False) -> tuple[tuple[str, ibmi.MIConfig], ...]:
    """``((name, estimator config), ...)`` of every quantity the run estimates offline (``mi.quantities``)
    or, with ``online``, of the online quantities (:attr:`ibjax.quantities.Quantity.online`),
    hashable: the online critics' static argument."""
    names = [q for q, Q in QUANTITIES.items() if Q.online] if online else config.mi.quantities
    return tuple((name, getattr(config.mi, name)) for name in names)


# --------------------------------------------------------------------------------------------------
# the per-member functions, vmapped over the member axis


def _data_axes(data: DeviceData) -> DeviceData:
    """vmap axes of a population's data set: images shared, the rest per member; the perturbation
    table per member when it has a member axis (an attack with perturbations), else shared."""
    return DeviceData(images=None, labels=0, poisoned=0, perturbation_row=0,
                      perturbations=0 if data.perturbations.ndim == data.images.ndim + 1 else None, trigger_key=0)


def _over_members(fn: Callable, in_axes: tuple, *args):
    """``jax.vmap(fn, in_axes)(*args)`` over the member axis (the leading axis of the last argument,
    the members' noise levels). A population of one calls ``fn`` on its member directly, so a run
    alone compiles the program of one network, not a vmap of size 1 (whose fusions XLA:CPU may
    compile differently: the same run, rounded otherwise; docs/measurements.md)."""
    if args[-1].shape[0] != 1:
        return jax.vmap(fn, in_axes=in_axes)(*args)

    def take(axis, sub):
        return sub if axis is None else jax.tree.map(lambda x: x[0], sub)

    member = [jax.tree.map(take, axis, a, is_leaf=lambda x: x is None) for axis, a in zip(in_axes, args)]
    return jax.tree.map(lambda x: x[None], fn(*member))


def _member_model(model: nn.Module, varying: tuple[str, ...], levels: jax.Array) -> nn.Module:
    return with_noise_levels(model, **{f: levels[i] for i, f in enumerate(varying)})


def population_train_step(state, data: DeviceData, index, key, noise, *, model, trigger, config, total_steps: int,
                          varying: tuple[str, ...]):
    """:func:`ibjax.train.train_step` of every member at once (pure; jit with the keyword arguments static).

    Args:
      state: stacked TrainState (leading member axis R).
      data: the population's training set (:class:`~ibjax.study.population.PopulationSetup`).
      index: int32[R, B], each member's batch; key: [R] keys; noise: f32[R, len(varying)].

    Returns the stacked new state and metrics with a leading member axis.
    """

    def one(st, d, idx, k, levels):
        return train_step(st, d, idx, k, model=_member_model(model, varying, levels), trigger=trigger, config=config,
                          total_steps=total_steps)

    return _over_members(one, (0, _data_axes(data), 0, 0, 0), state, data, index, key, noise)


def _tracked_member(train_state, online: OnlineCritics, data: DeviceData, index, key, masks, *, model, trigger,
                    config: TrainConfig, total_steps: int, quantities: tuple[tuple[str, ibmi.MIConfig], ...]):
    """One member's training step and, on the same batch's features, one step of every online critic.

    ``masks`` bool[G, N] are the member's MI groups. Each group's critic first reads the batch's
    member pairs it has not trained on, then steps on its buffer (:func:`ibjax.mi.update_buffered`);
    the read sums go into the step's metrics.
    """
    train_state, m = train_step(train_state, data, index, key, model=model, trigger=trigger, config=config,
                                total_steps=total_steps, return_features=True)
    x, t, logits = m.pop("features")
    member = masks[:, index]
    new = {}
    for q, cfg in quantities:
        a, b = QUANTITIES[q].pair({"x": x, "t": t, "y": logits})
        i = list(QUANTITIES).index(q)  # the registry's index: a quantity's key does not depend on the others chosen
        critic, pairs, est, rows = ibmi.update_buffered(getattr(online, q), getattr(online, f"{q}_pairs"), a, b, member,
                                                        jax.random.fold_in(key, 7 + i), cfg)
        new[q], new[f"{q}_pairs"] = critic, pairs
        m[f"{q}_online_sum"] = est * rows
        m[f"{q}_online_rows"] = rows
    return (train_state, OnlineCritics(**new)), m


def population_tracked_step(carry, data: DeviceData, index, key, noise, masks, *, model, trigger, config,
                            total_steps: int, varying: tuple[str, ...],
                            quantities: tuple[tuple[str, ibmi.MIConfig], ...]):
    """:func:`population_train_step` with every member's online critics stepped on its batch's
    features (``carry`` = stacked (TrainState, OnlineCritics); ``masks`` bool[R, G, N])."""

    def one(st, online, d, idx, k, m, levels):
        return _tracked_member(st, online, d, idx, k, m, model=_member_model(model, varying, levels), trigger=trigger,
                               config=config, total_steps=total_steps, quantities=quantities)

    train_state, online = carry
    return _over_members(one, (0, 0, _data_axes(data), 0, 0, 0, 0), train_state, online, data, index, key, masks,
                         noise)


def population_eval_step(variables, data: DeviceData, index, valid, key, noise, *, model, trigger,
                         varying: tuple[str, ...]):
    """:func:`ibjax.train.eval_step` of every member on one shared padded batch (index, valid [B];
    key [R]): sums with a leading member axis."""

    def one(v, d, k, levels):
        return eval_step(v, d, index, valid, k, model=_member_model(model, varying, levels), trigger=trigger)

    return _over_members(one, (0, _data_axes(data), 0, 0), variables, data, key, noise)


def population_features_step(variables, data: DeviceData, index, key, noise, *, model, trigger,
                             varying: tuple[str, ...]):
    """:func:`ibjax.train.features_step` of every member on its own batch (index [R, B], key [R])."""

    def one(v, d, idx, k, levels):
        return features_step(v, d, idx, k, model=_member_model(model, varying, levels), trigger=trigger)

    return _over_members(one, (0, _data_axes(data), 0, 0, 0), variables, data, index, key, noise)


_STATIC = ("model", "trigger", "varying")
_train_jit = jax.jit(population_train_step, static_argnames=(*_STATIC, "config", "total_steps"), donate_argnums=(0,))
_tracked_jit = jax.jit(population_tracked_step, static_argnames=(*_STATIC, "config", "total_steps", "quantities"),
                       donate_argnums=(0,))
_eval_jit = jax.jit(population_eval_step, static_argnames=_STATIC)
_features_jit = jax.jit(population_features_step, static_argnames=_STATIC)


def _statics(pop: PopulationSetup, trigger) -> dict:
    return dict(model=pop.model, trigger=trigger, varying=pop.varying)


# --------------------------------------------------------------------------------------------------
# one epoch of every member


def evaluate_members(variables, pop: PopulationSetup, data: DeviceData, index: np.ndarray, keys: Sequence, trigger,
                     batch_size: int) -> list[dict]:
    """Exact metrics of every member over ``index`` (every sample counted once; member r with key
    ``keys[r]``): loss (mean nats), accuracy, count, pred_hist, as :func:`ibjax.train.evaluate` gives
    one network."""
    mesh = pop.mesh
    batches, valid = pad_batch_columns(*test_batches(index, batch_size), mesh)
    member_keys = np.stack([step_keys(k, len(batches)) for k in keys])  # [R, S, 2]
    totals = None
    for s in range(len(batches)):
        out = _eval_jit(variables, data, put_batch(batches[s], mesh), put_batch(valid[s], mesh),
                        put_members(member_keys[:, s], mesh), pop.noise, **_statics(pop, trigger))
        out = jax.tree.map(to_host, out)  # float32 sums on the host: the same adds, no tiny device programs
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    out = []
    for r in range(pop.size):
        n = int(totals["count"][r])
        out.append({"loss": float(totals["loss_sum"][r]) / n, "accuracy": float(totals["correct"][r]) / n,
                    "count": n, "pred_hist": totals["pred_hist"][r]})
    return out


def evaluate_attack_members(variables, pop: PopulationSetup, keys: Sequence) -> list[dict]:
    """Clean test accuracy and loss, and the attack success rate, of every member (member r with key
    ``keys[r]``), as :func:`ibjax.train.evaluate_attack` counts them for one network."""
    cfg = pop.config.train
    target = pop.members[0].plan.target
    split = [jax.random.split(k) for k in keys]
    labels = to_host(pop.members[0].clean_test.labels)
    trigger = pop.members[0].attack.test_trigger
    clean = evaluate_members(variables, pop, pop.clean_test, np.arange(len(labels)), [k[0] for k in split], trigger,
                             cfg.eval_batch_size)
    asr_index = np.arange(len(labels)) if cfg.asr_on_all else np.flatnonzero(labels != target)
    trig = evaluate_members(variables, pop, pop.triggered_test, asr_index, [k[1] for k in split], trigger,
                            cfg.eval_batch_size)
    return [{"test_accuracy": c["accuracy"], "test_loss": c["loss"], "asr": float(t["pred_hist"][target]) / t["count"]}
            for c, t in zip(clean, trig)]


@functools.partial(jax.jit, donate_argnums=(0,))
def _scatter_rows(table, index, values):
    """``table[r, index[r]] = values[r]`` for every member r: f32[R, N], int32[R, B], f32[R, B]."""
    return table.at[jnp.arange(table.shape[0])[:, None], index].set(values)


@functools.partial(jax.jit, static_argnames=("model_name", "u"))
def _abi_members(params, batch_stats, *, model_name: str, u: float):
    """Grond's ABI (:func:`ibjax.defenses.abi_reset`) on every member's network: params with a
    leading member axis in and out."""
    def one(p, stats):
        return abi_reset({"params": p, "batch_stats": stats}, model_name, u)[0]["params"]

    return jax.vmap(one)(params, batch_stats)


def run_epoch(state: RunState, pop: PopulationSetup, *,
              progress: Optional[Callable[[int, int], None]] = None) -> tuple[RunState, list[dict]]:
    """Train one epoch, evaluate, step the schedule: ``(state after epoch e) -> (state after e + 1, metrics)``.

    Args:
      state: the stacked run state (leading member axis R; its buffers are donated: use the returned one).
      pop: the population's fixed set-up (one member for a single run).
      progress: optional ``(steps_done, steps_total)`` callable after each training step.

    Returns:
      The new state and one metrics dict per member: ``epoch``, ``train_accuracy``, ``train_loss``
      (nats), ``class_loss`` (per training label, nats), ``lr`` / ``lr_last`` (the rates the first
      and last steps used), ``sample_loss`` (f32[N] numpy: each training sample's loss in this
      epoch's step, NaN for samples in no full batch), ``test_accuracy``, ``test_loss`` (nats), ``asr``, and with online critics
      ``online`` = {"xt": f32[G] list, "ty": [...]}: each group's mean read (nats) on the epoch's
      new pairs.

    Raises:
      FloatingPointError: a member's training loss is not finite (naming the member in a population).
    """
    cfg, mesh = pop.config, pop.mesh
    epoch = int(to_host(state.epoch)[0]) + 1
    keys = [jax.random.fold_in(m.keys.train, epoch) for m in pop.members]
    batches, noise_keys = [], []
    for k in keys:  # each member's own shuffle and step keys, exactly as alone
        k_perm, k_noise = jax.random.split(k)
        batches.append(epoch_batches(k_perm, pop.train_data.size, cfg.train.batch_size))
        noise_keys.append(step_keys(k_noise, len(batches[-1])))
    index, noise_keys = np.stack(batches), np.stack(noise_keys)  # [R, S, B], [R, S, 2]
    step_config, total_steps = step_statics(cfg.train, pop.total_steps)
    statics = dict(config=step_config, total_steps=total_steps, **_statics(pop, pop.members[0].attack.train_trigger))
    if state.online is not None:
        step = functools.partial(_tracked_jit, masks=pop.group_masks, quantities=mi_configs(cfg, online=True),
                                 **statics)
        carry = (state.train, state.online)
    else:
        step = functools.partial(_train_jit, **statics)
        carry = state.train
    totals, lrs = None, []
    steps = index.shape[1]
    # each sample's loss in the epoch's step that used it, on the device (NaN: in no full batch)
    sample_loss = jnp.full((pop.size, pop.train_data.size), jnp.nan, jnp.float32)
    for s in range(steps):
        batch = put_batch(index[:, s], mesh, population=True)
        carry, m = step(carry, pop.train_data, batch, put_members(noise_keys[:, s], mesh), pop.noise)
        lrs.append(m.pop("lr"))
        sample_loss = _scatter_rows(sample_loss, batch, m.pop("sample_loss"))
        # Sums stay on the device: reading them every step would stall the pipeline.
        totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
        if progress is not None:
            progress(s + 1, steps)
    train_state, online = carry if state.online is not None else (carry, None)
    if cfg.train.abi_u > 0:
        train_state = train_state.replace(params=_abi_members(train_state.params, train_state.batch_stats,
                                                              model_name=cfg.model.name, u=cfg.train.abi_u))
    totals = jax.tree.map(to_host, totals)
    lr_first, lr_last = to_host(lrs[0]), to_host(lrs[-1])
    records = []
    sample_loss = to_host(sample_loss)
    for r in range(pop.size):
        member_totals = {k: v[r] for k, v in totals.items()}
        member_totals["lr_first"], member_totals["lr_last"] = float(lr_first[r]), float(lr_last[r])
        try:
            records.append({"epoch": epoch, **summarise_epoch(member_totals), "sample_loss": sample_loss[r]})
        except FloatingPointError as err:
            if pop.size == 1:
                raise
            raise FloatingPointError(f"member {r} (seed {pop.members[r].config.seed}): {err}") from err
    evals = evaluate_attack_members(train_state.variables, pop, [jax.random.fold_in(k, 1) for k in keys])
    for rec, ev in zip(records, evals):
        rec.update(ev)
    plateau = state.plateau
    if cfg.train.schedule == "plateau":
        losses = jnp.asarray([ev["test_loss"] for ev in evals], jnp.float32)
        plateau, lr = jax.vmap(lambda p, l, m: plateau_update(p, l, m, cfg.train))(plateau, train_state.lr, losses)
        train_state = train_state.replace(lr=lr)
    if online is not None:
        for q, mi_cfg in mi_configs(cfg, online=True):
            est = totals[f"{q}_online_sum"] / np.maximum(totals[f"{q}_online_rows"], 1)  # [R, G]
            critics = jax.vmap(lambda c, e: ibmi.end_epoch(c, e, mi_cfg))(getattr(online, q),
                                                                           jnp.asarray(est, jnp.float32))
            online = online.replace(**{q: critics})
            for rec, row in zip(records, est):
                rec.setdefault("online", {})[q] = [float(v) for v in row]
    new = RunState(epoch=np.full((pop.size,), epoch, np.int32), train=train_state, plateau=plateau, online=online)
    return put_members(new, mesh), records


# --------------------------------------------------------------------------------------------------
# MI of every member


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
        return QUANTITIES[self.quantity].pair({"x": x.reshape(x.shape[0], -1), "t": t, "y": logits})


def population_features(variables, pop: PopulationSetup, used: Sequence[np.ndarray], draw_keys: Sequence[Sequence],
                         parts: tuple[int, ...] = (0, 1, 2), batch_size: int = 1000) -> tuple[np.ndarray, ...]:
    """Every member's features of its samples ``used[r]``, batched over members, for each noise draw
    ``d`` (member r's batch s of draw d read with key ``fold_in(draw_keys[d][r], s)``), joined on the
    host: ``parts`` of ``(x f32[sum n_r, x_dim], t f32[sum n_r, draws, D], y f32[sum n_r, draws, K])``
    with member r's rows after the members before it (X has no noise: draw 0's).

    The rows are joined on the host (a device-to-host copy; no cross-device program: XLA:CPU with
    many forced devices can deadlock on programs holding several concurrent all-gathers)."""
    mesh = pop.mesh
    longest = max(len(u) for u in used)
    tables = []
    for u in used:
        padded = np.concatenate([u, np.full(longest - len(u), u[0], u.dtype)])
        tables.append(test_batches(padded, batch_size)[0])
    width = tables[0].shape[1]
    tables = [pad_batch_columns(t, np.ones(t.shape, bool), mesh)[0] for t in tables]
    index = np.stack(tables)  # [R, S, B']
    trigger = pop.members[0].attack.train_trigger
    per_draw = []
    for keys in draw_keys:
        dkeys = np.stack([step_keys(k, index.shape[1]) for k in keys])
        outs = [_features_jit(variables, pop.train_data, put_batch(index[:, s], mesh, population=True),
                              put_members(dkeys[:, s], mesh), pop.noise, **_statics(pop, trigger))
                for s in range(index.shape[1])]
        per_draw.append({i: np.concatenate([to_host(o[i])[:, :width] for o in outs], axis=1) for i in parts
                         if i > 0 or not per_draw})
    joined = []
    for i in parts:
        if i == 0:
            joined.append(np.concatenate([per_draw[0][0][r, :len(u)] for r, u in enumerate(used)]))
        else:
            joined.append(np.concatenate([np.stack([p[i][r, :len(u)] for p in per_draw], axis=1)
                                          for r, u in enumerate(used)]))
    return tuple(joined)


def _quantity_keys(key: jax.Array) -> dict:
    """A member's MI key as one key per quantity and one for the bank: ``{"xt": k, "ty": k, "bank": k,
    "xy": k}``. I(X;T), I(T;Y_pred) and the bank split the key in three, as before any other quantity
    existed; every later quantity folds its registry index into it, so adding one moves no estimate."""
    names = list(QUANTITIES)
    first = jax.random.split(key, 3)
    keys = {names[0]: first[0], names[1]: first[1], "bank": first[2]}
    keys.update({q: jax.random.fold_in(key, 3 + i) for i, q in enumerate(names[2:])})
    return keys


@dataclasses.dataclass(frozen=True)
class PopulationBank:
    """The inputs of a population's joint estimator calls (``mi.features="bank"``).

    Attributes:
      shared: per quantity its ``(a, b)`` banks (``{"xt": (t_bank, x), "ty": (y_bank, t_bank)}``),
        the members' banks joined (member r's rows ``offsets[r] : offsets[r] + sizes[r]``),
        replicated on the mesh.
      group_data: int32[sum G_r, M], each group's rows into the joined bank (members in order).
      valid: bool[sum G_r, M].
      keys: ``{"xt": [sum G_r, 2], "ty": ...}``: member r's groups keep the keys they have alone
        (``split(k_quantity_r, G_r)``, the member's MI key split into one key per quantity and one
        for the bank).
      offsets, sizes: each member's first bank row and row count; groups: each member's group count.
      names: the groups' names for error messages (``"run r <group>"`` in a population).
    """

    shared: dict
    group_data: np.ndarray
    valid: np.ndarray
    keys: dict
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    groups: tuple[int, ...]
    names: tuple[str, ...]


def population_bank(keys: Sequence, variables, pop: PopulationSetup) -> PopulationBank:
    """Every member's feature bank (``mi.bank_draws`` noise draws of the samples its groups use) and
    group tables for one joint estimator call per quantity, from the members' MI keys (``keys[r]``,
    split into xt / ty / bank keys) and stacked variables."""
    tables = [group_index_table(m.plan.group_masks) for m in pop.members]
    split = [_quantity_keys(k) for k in keys]
    used = [np.unique(index[valid]) for index, valid in tables]
    draw_keys = [[jax.random.fold_in(s["bank"], d) for s in split] for d in range(pop.config.mi.bank_draws)]
    x, t_bank, y_bank = put_replicated(population_features(variables, pop, used, draw_keys), pop.mesh)
    width = max(index.shape[1] for index, _ in tables)
    rows, valids, offsets, names, offset = [], [], [], [], 0
    for r, ((index, valid), u) in enumerate(zip(tables, used)):
        row_of = np.zeros(pop.train_data.size, np.int32)
        row_of[u] = np.arange(len(u)) + offset
        pad = width - index.shape[1]
        rows.append(np.pad(row_of[index], ((0, 0), (0, pad))))
        valids.append(np.pad(valid, ((0, 0), (0, pad))))
        names += pop.group_names(r)
        offsets.append(offset)
        offset += len(u)
    group_keys_ = {q: np.concatenate([np.asarray(jax.random.split(s[q], len(tables[r][0])))
                                      for r, s in enumerate(split)]) for q in pop.config.mi.quantities}
    features = {"x": x, "t": t_bank, "y": y_bank}
    return PopulationBank(shared={q: QUANTITIES[q].pair(features) for q in pop.config.mi.quantities},
                          group_data=np.concatenate(rows),
                          valid=np.concatenate(valids), keys=group_keys_, offsets=tuple(offsets),
                          sizes=tuple(len(u) for u in used), groups=tuple(len(t[0]) for t in tables),
                          names=tuple(names))


def estimate_network_mi(keys: Sequence, variables, pop: PopulationSetup, *, progress: bool = False,
                        label: str = "") -> list[dict]:
    """I(X;T) and I(T;Y_pred) of every member's network for every group of that member (member r
    with its MI key ``keys[r]``, stacked ``variables``).

    Pairs are drawn per the config's ``mi.features``: with ``"bank"`` every member's groups read a
    bank of ``mi.bank_draws`` noise draws per sample computed once here, and share one estimator call
    per quantity (members x groups as one group axis, split over every device;
    :func:`population_bank`); with ``"fresh"`` (a new noise draw per critic step) each member is
    estimated in its own call.

    Returns:
      One ``{quantity: {group: record}}`` per member (the config's ``mi.quantities``: ``"xt"``,
      ``"ty"`` by default), each record as :meth:`ibjax.mi.MIResult.to_dict` gives one group (nats).
    """
    cfg, mesh = pop.config, pop.mesh
    dims = {q: Q.pair(pop.members[0].feature_sizes) for q, Q in QUANTITIES.items()}
    runs = "" if pop.size == 1 else f" ({pop.size} runs)"
    out = [{} for _ in pop.members]
    if cfg.mi.features == "bank":
        bank = population_bank(keys, variables, pop)
        for q, mi_cfg in mi_configs(cfg):
            bar = Progress(f"{label}{QUANTITIES[q].label} estimator{runs}", mi_cfg.total_epochs, "epoch",
                           enabled=progress)
            res = estimate_mi_on_mesh(bank.keys[q], ibmi.bank_pairs, bank.shared[q], bank.group_data, bank.valid,
                                      *dims[q], config=mi_cfg, mesh=mesh, group_names=bank.names,
                                      progress=bar if progress else None)
            bar.close()
            start = 0
            for r, m in enumerate(pop.members):
                g = bank.groups[r]
                out[r][q] = per_group(jax.tree.map(lambda a: a[start : start + g], res), m.plan.group_names)
                start += g
        return out
    host = jax.tree.map(to_host, variables)
    for r, (key, m) in enumerate(zip(keys, pop.members)):
        index, valid = group_index_table(m.plan.group_masks)
        member_keys = _quantity_keys(key)
        shared = (member_of(host, r, mesh), m.train_data)
        who = "" if pop.size == 1 else f"[{r}] "
        for q, mi_cfg in mi_configs(cfg):
            bar = Progress(f"{label}{who}{QUANTITIES[q].label} estimator", mi_cfg.total_epochs, "epoch",
                           enabled=progress)
            res = estimate_mi_on_mesh(member_keys[q], FreshPairs(m.model, m.attack.train_trigger, q), shared, index, valid,
                                      *dims[q], config=mi_cfg, mesh=mesh, group_names=pop.group_names(r),
                                      progress=bar if progress else None)
            bar.close()
            out[r][q] = per_group(res, m.plan.group_names)
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
      :class:`ibjax.mi.MIResult` of the G real groups, as host (NumPy) arrays on every process; an
      empty group (no valid row) reads NaN (:meth:`ibjax.mi.MIResult.without`).
    """
    valid = np.asarray(valid, bool)
    g = valid.shape[0]
    empty = ~valid.any(axis=1)
    if empty.any() and not empty.all():
        # A group the run does not have (a clean run's target_backdoor) is estimated on a stand-in, a
        # copy of the first non-empty group, and blanked after: the batched call keeps one shape for
        # every member of a population, at the cost of one group's estimator work.
        stand = np.where(empty, int(np.flatnonzero(~empty)[0]), np.arange(g))
        res = estimate_mi_on_mesh(key, sample_fn, shared, jax.tree.map(lambda x: np.asarray(x)[stand], group_data),
                                  valid[stand], da, db, config=config, mesh=mesh, group_names=group_names,
                                  progress=progress)
        return res.without(empty)
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


# --------------------------------------------------------------------------------------------------
# clustering of the representation


def representation_clustering(keys: Sequence, variables, pop: PopulationSetup, points: int,
                              method: str = "pca") -> list[tuple[dict, dict]]:
    """Silhouette scores of every member's T per group (target class split in clean and backdoor)
    and a 2-D embedding (``method``: :data:`ibjax.metrics.clustering.EMBEDDINGS`) of ``points``
    samples (member r with key ``keys[r]``, stacked ``variables``). Returns one ``(silhouettes
    {group: float}, embedding arrays)`` per member."""
    n = pop.train_data.size
    idx = np.arange(n)
    (t_all,) = population_features(variables, pop, [idx] * pop.size, [list(keys)], parts=(1,))
    out = []
    for r, (key, setup) in enumerate(zip(keys, pop.members)):
        plan = setup.plan
        t = jnp.asarray(t_all[r * n : (r + 1) * n, 0])
        sil = ibmetrics.group_silhouettes(t, jnp.asarray(plan.labels), jnp.asarray(plan.poisoned), plan.target,
                                          num_classes=setup.num_classes)
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
        sub = np.sort(rng.choice(n, size=min(points, n), replace=False))
        emb = ibmetrics.embed_2d(t[sub], method, seed=int(rng.integers(2**31 - 1)))
        out.append(({k: float(v) for k, v in sil.items()},
                    {"embedding": emb, "labels": plan.labels[sub], "poisoned": plan.poisoned[sub],
                     "method": np.asarray(method)}))
    return out
