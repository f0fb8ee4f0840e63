"""Populations of runs: runs that differ only in seed, poison ratio or noise level, trained as one program.

A population stacks its R members' run states along a leading member axis and trains them with one
``vmap``-ed, jitted step (:func:`population_train_step`): one compiled program, R small networks
batched into large kernels, spread over the devices of a ``("runs", "data")`` mesh
(:func:`ibjax.parallel.population_mesh`: members split over ``"runs"``, each member's batch split
over ``"data"``). Members may differ in:

- ``seed``: initialisation, shuffles, noise, poisoning choices and estimator keys;
- ``poison.ratio``: the poisoning plan (flags, labels, MI groups) is per member;
- ``model.gamma_xt`` / ``model.gamma_ty``: a level that differs between members becomes a traced
  per-member value (:func:`ibjax.models.with_noise_levels`) instead of a static module field. It
  must then be > 0 for every member: a static level of 0 skips the noise draw, which a traced one
  cannot, and the member would no longer draw what it draws alone.

Everything else (data set, attack and its options, network, recipe, estimators, MI epochs, ...)
must be equal (:func:`population_incompatibility` names the difference). Attacks that compute
against a clean model first (label-consistent PGD, TrojanNN) and online critics are not batched:
:func:`run_many` runs those alone.

Every member's results equal the same run made alone with :func:`ibjax.study.run_study` (same seed)
up to float rounding: each member uses exactly its own keys (``fold_in`` of its seed's keys with the
epoch and step, as alone), its own shuffles and its own plan, and batch norm sees that member's batch
only. Offline MI in ``feature_mode="bank"`` runs every member's groups in one estimator call
(members x groups as one group axis, split over every device); each group keeps the key it has alone
(``split(key_member, G)[g]``), and a group's result depends only on its key and samples. With fresh
features (a network pass per critic step) each member's groups are estimated in its own call.

Each member keeps a normal run directory (config, metrics, MI, checkpoints of its own state, plots,
summary): :mod:`experiments.compare` reads it, and it resumes alone with ``run_study`` or with its
population. In a member's records, ``train_s`` / ``mi_s`` / ``wall_s`` are the population's times
(shared by its members).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Callable, Literal, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ibjax import mi as ibmi
from ibjax.models import NOISE_FIELDS, with_noise_levels
from ibjax.parallel import (
    barrier,
    check_batch_divisible,
    describe_mesh,
    pad_batch_columns,
    population_mesh,
    put_batch,
    put_members,
    put_replicated,
    to_host,
)
from ibjax.pipeline import DeviceData, epoch_batches, test_batches
from ibjax.poison import group_index_table
from ibjax.progress import LOGGER, Progress, phase
from ibjax.study.config import StudyConfig, check_config, config_diff, flatten_config
from ibjax.study.rundir import RunDirectory
from ibjax.study.runner import RunRecorder, check_mesh_processes, clustering_key, open_run, run_study
from ibjax.study.setup import build_attack, build_setup
from ibjax.study.state import RunState, StudySetup, init_run_state
from ibjax.study.steps import QUANTITY_LABELS, estimate_mi_on_mesh, estimate_network_mi, per_group, \
    representation_clustering
from ibjax.train import eval_step, features_step, plateau_update, step_keys, step_statics, summarise_epoch, train_step

__all__ = [
    "POPULATION_FIELDS",
    "population_signature",
    "member_incompatibility",
    "population_incompatibility",
    "group_populations",
    "PopulationSetup",
    "build_population",
    "stack_states",
    "member_of",
    "population_train_step",
    "population_eval_step",
    "population_features_step",
    "run_population_epoch",
    "PopulationBank",
    "population_bank",
    "population_network_mi",
    "run_population",
    "run_many",
]

POPULATION_FIELDS = ("seed", "poison.ratio", "model.gamma_xt", "model.gamma_ty")
"""Config fields in which the members of one population may differ."""


# --------------------------------------------------------------------------------------------------
# which runs can share a population


def population_signature(config: StudyConfig) -> str:
    """Everything of ``config`` but :data:`POPULATION_FIELDS` (equal signatures: one population)."""
    flat = {k: v for k, v in flatten_config(config).items() if k not in POPULATION_FIELDS}
    return json.dumps(flat, sort_keys=True, default=str)


def member_incompatibility(config: StudyConfig) -> Optional[str]:
    """Why ``config`` cannot join any population (None if it can). Raises ValueError for a bad config."""
    check_config(config)
    if config.online:
        return f"mi_mode {config.mi_mode!r}: online critics are not batched over members"
    attack = build_attack(config)
    if attack.needs_perturbation or attack.optimised_pattern:
        return f"attack {config.attack!r} computes against a clean model first (per run)"
    return None


def _noise_class(config: StudyConfig) -> tuple:
    # A level of 0 is static (no draw); levels > 0 may be traced. Mixing both would change draws.
    return tuple(getattr(config.model, f) <= 0 for f in NOISE_FIELDS)


def population_incompatibility(configs: Sequence[StudyConfig]) -> Optional[str]:
    """Why ``configs`` cannot train as one population (None if they can)."""
    if not configs:
        return "no runs"
    for i, c in enumerate(configs):
        why = member_incompatibility(c)
        if why:
            return f"run {i} ({c.attack}, seed {c.seed}): {why}"
    ref = population_signature(configs[0])
    for i, c in enumerate(configs[1:], 1):
        if population_signature(c) != ref:
            diff = [k for k in config_diff(configs[0], c) if k not in POPULATION_FIELDS]
            return f"run {i} differs from run 0 in {', '.join(diff)} (members may differ only in {POPULATION_FIELDS})"
    for f, zero in zip(NOISE_FIELDS, zip(*(_noise_class(c) for c in configs))):
        if len(set(zero)) > 1:
            return f"model.{f} is 0 for some members and > 0 for others (a traced level must be > 0 for all)"
    seen: dict = {}
    for i, c in enumerate(configs):
        j = seen.setdefault(json.dumps(flatten_config(c), sort_keys=True, default=str), i)
        if j != i:
            return f"runs {j} and {i} are the same run"
    return None


def group_populations(configs: Sequence[StudyConfig], max_size: Optional[int] = None,
                      keys: Optional[Sequence] = None) -> list[list[int]]:
    """Indices of ``configs`` grouped into populations (in order of first appearance), each at most
    ``max_size`` long; a run that cannot join one is a group of its own. ``keys`` (one per config)
    splits groups further (e.g. by epochs already completed)."""
    groups: dict = {}
    for i, c in enumerate(configs):
        extra = None if keys is None else keys[i]
        if member_incompatibility(c) is not None:
            groups[("alone", i)] = [i]
            continue
        groups.setdefault((population_signature(c), _noise_class(c), extra), []).append(i)
    out = []
    for members in groups.values():
        size = max_size or len(members)
        out += [members[s : s + size] for s in range(0, len(members), size)]
    return sorted(out, key=lambda g: g[0])


# --------------------------------------------------------------------------------------------------
# the population's fixed set-up

_MEMBER_DATA = DeviceData(images=None, labels=0, poisoned=0, perturbation_row=0, perturbations=None, trigger_key=0)
"""vmap axes of a population's data: images (and the empty perturbation table) shared, the rest per member."""


@dataclasses.dataclass(frozen=True, eq=False)
class PopulationSetup:
    """Everything fixed for a population (see the module docstring).

    Attributes:
      members: each member's own :class:`~ibjax.study.state.StudySetup` (its plan, keys, attack,
        network with its static noise levels; data sets on the population's mesh, images shared).
      mesh: the ``("runs", "data")`` mesh.
      model: member 0's network; the levels named in ``varying`` are replaced per member.
      varying: noise fields that differ between members (traced per member).
      noise: f32[R, len(varying)], the members' levels of those fields (replicated).
      train_data, clean_test, triggered_test: the data sets with a member axis on every field but
        the images (shared): labels, flags and trigger keys per member.
    """

    members: tuple[StudySetup, ...]
    mesh: Mesh
    model: nn.Module
    varying: tuple[str, ...]
    noise: jax.Array
    train_data: DeviceData
    clean_test: DeviceData
    triggered_test: DeviceData

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def config(self) -> StudyConfig:
        return self.members[0].config

    @property
    def steps_per_epoch(self) -> int:
        return self.members[0].steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.members[0].total_steps


def _stack_data(datas: Sequence[DeviceData], mesh: Mesh) -> DeviceData:
    """One data set with a member axis on labels, flags and trigger keys; images from member 0."""
    first = datas[0]
    stacked = {f: np.stack([to_host(getattr(d, f)) for d in datas])
               for f in ("labels", "poisoned", "perturbation_row", "trigger_key")}
    return first.replace(**put_replicated(stacked, mesh))


def build_population(configs: Sequence[StudyConfig], *, mesh: Mesh, progress: bool = True) -> PopulationSetup:
    """Build every member's set-up (all checks first) on ``mesh`` and the stacked data sets.

    Raises ValueError if the configs cannot share a population (:func:`population_incompatibility`).
    """
    why = population_incompatibility(configs)
    if why:
        raise ValueError(f"these runs cannot share one population: {why}")
    members = []
    for i, config in enumerate(configs):
        setup = build_setup(config, progress=progress and i == 0, mesh=mesh)
        if members:
            first = members[0]
            if setup.train_data.images.shape != first.train_data.images.shape or setup.attack != first.attack:
                raise ValueError(f"run {i} loaded different images or built a different attack than run 0")
            # One copy of the images on each device, whatever the population size.
            setup = dataclasses.replace(
                setup, train_data=setup.train_data.replace(images=first.train_data.images),
                clean_test=setup.clean_test.replace(images=first.clean_test.images),
                triggered_test=setup.triggered_test.replace(images=first.triggered_test.images))
        members.append(setup)
    varying = tuple(f for f in NOISE_FIELDS if len({getattr(c.model, f) for c in configs}) > 1)
    noise = np.asarray([[getattr(c.model, f) for f in varying] for c in configs], np.float32).reshape(len(configs), -1)
    return PopulationSetup(
        members=tuple(members), mesh=mesh, model=members[0].model, varying=varying,
        noise=put_replicated(noise, mesh),
        train_data=_stack_data([m.train_data for m in members], mesh),
        clean_test=_stack_data([m.clean_test for m in members], mesh),
        triggered_test=_stack_data([m.triggered_test for m in members], mesh),
    )


def stack_states(states: Sequence[RunState], mesh: Mesh) -> RunState:
    """Members' run states stacked along a leading member axis, split over the mesh's ``"runs"`` axis."""
    return put_members(jax.tree.map(lambda *xs: np.stack([to_host(x) for x in xs]), *states), mesh)


def member_of(host_tree, r: int, mesh: Optional[Mesh] = None):
    """Member r of a stacked pytree held on the host (``jax.tree.map(to_host, tree)``), as NumPy, or
    replicated on ``mesh``. Slicing on the host keeps cross-device programs out of the per-member
    work (checkpoints need a host copy anyway)."""
    member = jax.tree.map(lambda x: x[r], host_tree)
    return member if mesh is None else put_replicated(member, mesh)


# --------------------------------------------------------------------------------------------------
# the vmapped steps


def _member_model(model: nn.Module, varying: tuple[str, ...], levels: jax.Array) -> nn.Module:
    return with_noise_levels(model, **{f: levels[i] for i, f in enumerate(varying)})


def population_train_step(state, data: DeviceData, index, key, noise, *, model, trigger, config, total_steps: int,
                          varying: tuple[str, ...]):
    """:func:`ibjax.train.train_step` of every member at once (pure; jit with the keyword arguments static).

    Args:
      state: stacked TrainState (leading member axis R).
      data: the population's training set (:class:`PopulationSetup`).
      index: int32[R, B], each member's batch; key: [R] keys; noise: f32[R, len(varying)].

    Returns the stacked new state and metrics with a leading member axis.
    """

    def one(st, d, idx, k, levels):
        return train_step(st, d, idx, k, model=_member_model(model, varying, levels), trigger=trigger, config=config,
                          total_steps=total_steps)

    return jax.vmap(one, in_axes=(0, _MEMBER_DATA, 0, 0, 0))(state, data, index, key, noise)


def population_eval_step(variables, data: DeviceData, index, valid, key, noise, *, model, trigger,
                         varying: tuple[str, ...]):
    """:func:`ibjax.train.eval_step` of every member on one shared padded batch (index, valid [B];
    key [R]): sums with a leading member axis."""

    def one(v, d, k, levels):
        return eval_step(v, d, index, valid, k, model=_member_model(model, varying, levels), trigger=trigger)

    return jax.vmap(one, in_axes=(0, _MEMBER_DATA, 0, 0))(variables, data, key, noise)


def population_features_step(variables, data: DeviceData, index, key, noise, *, model, trigger,
                             varying: tuple[str, ...]):
    """:func:`ibjax.train.features_step` of every member on its own batch (index [R, B], key [R])."""

    def one(v, d, idx, k, levels):
        return features_step(v, d, idx, k, model=_member_model(model, varying, levels), trigger=trigger)

    return jax.vmap(one, in_axes=(0, _MEMBER_DATA, 0, 0, 0))(variables, data, index, key, noise)


_STATIC = ("model", "trigger", "varying")
_train_jit = jax.jit(population_train_step, static_argnames=(*_STATIC, "config", "total_steps"), donate_argnums=(0,))
_eval_jit = jax.jit(population_eval_step, static_argnames=_STATIC)
_features_jit = jax.jit(population_features_step, static_argnames=_STATIC)


def _statics(pop: PopulationSetup, trigger) -> dict:
    return dict(model=pop.model, trigger=trigger, varying=pop.varying)


def _evaluate(variables, pop: PopulationSetup, data: DeviceData, index: np.ndarray, keys: Sequence, trigger,
              batch_size: int) -> list[dict]:
    """:func:`ibjax.train.evaluate` of every member (member r with key ``keys[r]``)."""
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


def _evaluate_attack(variables, pop: PopulationSetup, keys: Sequence) -> list[dict]:
    """:func:`ibjax.train.evaluate_attack` of every member (member r with key ``keys[r]``)."""
    cfg = pop.config.train
    target = pop.members[0].plan.target
    split = [jax.random.split(k) for k in keys]
    labels = to_host(pop.members[0].clean_test.labels)
    trigger = pop.members[0].attack.test_trigger
    clean = _evaluate(variables, pop, pop.clean_test, np.arange(len(labels)), [k[0] for k in split], trigger,
                      cfg.eval_batch_size)
    asr_index = np.arange(len(labels)) if cfg.asr_on_all else np.flatnonzero(labels != target)
    trig = _evaluate(variables, pop, pop.triggered_test, asr_index, [k[1] for k in split], trigger, cfg.eval_batch_size)
    return [{"test_accuracy": c["accuracy"], "test_loss": c["loss"], "asr": float(t["pred_hist"][target]) / t["count"]}
            for c, t in zip(clean, trig)]


def run_population_epoch(state: RunState, pop: PopulationSetup, *,
                         progress: Optional[Callable[[int, int], None]] = None) -> tuple[RunState, list[dict]]:
    """One epoch of every member: :func:`ibjax.study.steps.run_epoch` for a stacked state.

    Returns the new stacked state and one record per member (as ``run_epoch``'s).
    Raises FloatingPointError naming the member whose loss is not finite.
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
    step = functools.partial(_train_jit, config=step_config, total_steps=total_steps,
                             **_statics(pop, pop.members[0].attack.train_trigger))
    train_state, totals, lrs = state.train, None, []
    steps = index.shape[1]
    for s in range(steps):
        train_state, m = step(train_state, pop.train_data, put_batch(index[:, s], mesh, population=True),
                              put_members(noise_keys[:, s], mesh), pop.noise)
        lrs.append(m.pop("lr"))
        totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
        if progress is not None:
            progress(s + 1, steps)
    totals = jax.tree.map(to_host, totals)
    lr_first, lr_last = to_host(lrs[0]), to_host(lrs[-1])
    records = []
    for r in range(pop.size):
        member_totals = {k: v[r] for k, v in totals.items()}
        member_totals["lr_first"], member_totals["lr_last"] = float(lr_first[r]), float(lr_last[r])
        try:
            records.append({"epoch": epoch, **summarise_epoch(member_totals)})
        except FloatingPointError as err:
            raise FloatingPointError(f"member {r} (seed {pop.members[r].config.seed}): {err}") from err
    evals = _evaluate_attack(train_state.variables, pop, [jax.random.fold_in(k, 1) for k in keys])
    for rec, ev in zip(records, evals):
        rec.update(ev)
    plateau = state.plateau
    if cfg.train.schedule == "plateau":
        losses = jnp.asarray([ev["test_loss"] for ev in evals], jnp.float32)
        plateau, lr = jax.vmap(lambda p, l, m: plateau_update(p, l, m, cfg.train))(plateau, train_state.lr, losses)
        train_state = train_state.replace(lr=lr)
    new = RunState(epoch=np.full((pop.size,), epoch, np.int32), train=train_state, plateau=plateau, online=None)
    return put_members(new, mesh), records


# --------------------------------------------------------------------------------------------------
# MI of every member


def _population_bank(variables, pop: PopulationSetup, used: Sequence[np.ndarray], bank_keys: Sequence):
    """Every member's feature bank for its samples ``used[r]``, batched over members, joined into one
    bank ``(x f32[sum n_r, x_dim], t f32[sum n_r, R, D], y f32[sum n_r, R, K])`` (member r's rows
    after the members before it) replicated on the mesh. Member r's batch s holds the samples and
    key that :func:`ibjax.train.extract_features` gives it alone (padded to the longest member).

    The bank is joined on the host and placed once (a device-to-host-to-device copy per MI epoch,
    and no cross-device program: XLA:CPU with many forced devices can deadlock on programs holding
    several concurrent all-gathers)."""
    mesh, draws, bsz = pop.mesh, pop.config.bank_draws, 1000
    longest = max(len(u) for u in used)
    tables = []
    for u in used:
        padded = np.concatenate([u, np.full(longest - len(u), u[0], u.dtype)])
        tables.append(test_batches(padded, bsz)[0])
    width = tables[0].shape[1]
    tables = [pad_batch_columns(t, np.ones(t.shape, bool), mesh)[0] for t in tables]
    index = np.stack(tables)  # [R, S, B']
    trigger = pop.members[0].attack.train_trigger
    per_draw = []
    for d in range(draws):
        keys = np.stack([step_keys(jax.random.fold_in(k, d), index.shape[1]) for k in bank_keys])
        outs = [_features_jit(variables, pop.train_data, put_batch(index[:, s], mesh, population=True),
                              put_members(keys[:, s], mesh), pop.noise, **_statics(pop, trigger))
                for s in range(index.shape[1])]
        per_draw.append(tuple(np.concatenate([to_host(o[i])[:, :width] for o in outs], axis=1) for i in range(3)))
    x = np.concatenate([per_draw[0][0][r, :len(u)] for r, u in enumerate(used)])
    t = np.concatenate([np.stack([p[1][r, :len(u)] for p in per_draw], axis=1) for r, u in enumerate(used)])
    y = np.concatenate([np.stack([p[2][r, :len(u)] for p in per_draw], axis=1) for r, u in enumerate(used)])
    return put_replicated((x, t, y), mesh)


@dataclasses.dataclass(frozen=True)
class PopulationBank:
    """The inputs of a population's joint estimator calls (``feature_mode="bank"``).

    Attributes:
      shared: ``{"xt": (t_bank, x), "ty": (y_bank, t_bank)}``, the members' banks joined (member r's
        rows ``offsets[r] : offsets[r] + sizes[r]``), replicated on the mesh.
      group_data: int32[sum G_r, M], each group's rows into the joined bank (members in order).
      valid: bool[sum G_r, M].
      keys: ``{"xt": [sum G_r, 2], "ty": ...}``: member r's groups keep the keys they have alone
        (``split(k_quantity_r, G_r)``).
      offsets, sizes: each member's first bank row and row count; groups: each member's group count.
      names: ``"run r <group>"`` for error messages.
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
    """Every member's feature bank and group tables for one joint estimator call per quantity, from
    the members' MI keys (``keys[r]``, split into xt / ty / bank keys as alone) and stacked variables."""
    tables = [group_index_table(m.plan.group_masks) for m in pop.members]
    split = [jax.random.split(k, 3) for k in keys]  # k_xt, k_ty, k_bank as alone
    used = [np.unique(index[valid]) for index, valid in tables]
    x, t_bank, y_bank = _population_bank(variables, pop, used, [s[2] for s in split])
    width = max(index.shape[1] for index, _ in tables)
    rows, valids, offsets, names, offset = [], [], [], [], 0
    for r, ((index, valid), u) in enumerate(zip(tables, used)):
        row_of = np.zeros(pop.train_data.size, np.int32)
        row_of[u] = np.arange(len(u)) + offset
        pad = width - index.shape[1]
        rows.append(np.pad(row_of[index], ((0, 0), (0, pad))))
        valids.append(np.pad(valid, ((0, 0), (0, pad))))
        names += [f"run {r} {g}" for g in pop.members[r].plan.group_names]
        offsets.append(offset)
        offset += len(u)
    group_keys = {q: np.concatenate([np.asarray(jax.random.split(s[i], len(tables[r][0])))
                                     for r, s in enumerate(split)]) for i, q in enumerate(("xt", "ty"))}
    return PopulationBank(shared={"xt": (t_bank, x), "ty": (y_bank, t_bank)}, group_data=np.concatenate(rows),
                          valid=np.concatenate(valids), keys=group_keys, offsets=tuple(offsets),
                          sizes=tuple(len(u) for u in used), groups=tuple(len(t[0]) for t in tables),
                          names=tuple(names))


def population_network_mi(keys: Sequence, variables, pop: PopulationSetup, *, progress: bool = False,
                          label: str = "") -> list[dict]:
    """:func:`ibjax.study.steps.estimate_network_mi` of every member (member r with ``keys[r]``).

    With ``feature_mode="bank"`` every member's groups share one estimator call per quantity
    (members x groups as one group axis, split over every device; :func:`population_bank`); with
    fresh features each member is estimated in its own call. Returns one ``{"xt": {group: record},
    "ty": {...}}`` per member.
    """
    cfg, mesh = pop.config, pop.mesh
    if cfg.feature_mode != "bank":
        host = jax.tree.map(to_host, variables)
        return [estimate_network_mi(k, member_of(host, r, mesh), m, progress=progress, label=f"{label}[{r}] ")
                for r, (k, m) in enumerate(zip(keys, pop.members))]
    bank = population_bank(keys, variables, pop)
    m0 = pop.members[0]
    dims = {"xt": (m0.t_dim, m0.x_dim), "ty": (m0.num_classes, m0.t_dim)}
    out = [{} for _ in pop.members]
    for q, mi_cfg in (("xt", cfg.xt), ("ty", cfg.ty)):
        bar = Progress(f"{label}{QUANTITY_LABELS[q]} estimator ({pop.size} runs)", mi_cfg.total_epochs, "epoch",
                       enabled=progress)
        res = estimate_mi_on_mesh(bank.keys[q], ibmi.bank_pairs, bank.shared[q], bank.group_data, bank.valid, *dims[q],
                                  config=mi_cfg, mesh=mesh, group_names=bank.names, progress=bar if progress else None)
        bar.close()
        start = 0
        for r, m in enumerate(pop.members):
            g = bank.groups[r]
            out[r][q] = per_group(jax.tree.map(lambda a: a[start : start + g], res), m.plan.group_names)
            start += g
    return out


# --------------------------------------------------------------------------------------------------
# running a population


def run_population(configs: Sequence[StudyConfig], run_dirs: Sequence[str], *,
                   resume: Union[bool, Literal["auto"]] = False, fresh: bool = False, progress: bool = True,
                   devices: Optional[int] = None, mesh: Optional[Mesh] = None,
                   runs: Optional[int] = None, plots: bool = True) -> list[dict]:
    """Run (or resume) a population of studies in one program; each member writes its own run directory.

    Args:
      configs: the members' configs (:func:`population_incompatibility` must find nothing).
      run_dirs: one run directory per member.
      resume, fresh, progress, plots: as :func:`ibjax.study.run_study`, for every member. Resuming needs
        every member checkpointed after the same epoch (else resume them one by one with run_study).
      devices, runs: the mesh (:func:`ibjax.parallel.population_mesh`), or ``mesh`` itself.

    Returns:
      Each member's summary (as ``run_study``'s).

    Raises:
      ValueError: incompatible members, a bad option or directory, members checkpointed at different
        epochs; before any training, leaving nothing behind.
    """
    configs = list(configs)
    if len(run_dirs) != len(configs):
        raise ValueError(f"{len(configs)} configs but {len(run_dirs)} run directories")
    if len({os.path.abspath(d) for d in run_dirs}) != len(run_dirs):
        raise ValueError("two members share a run directory: give each its own")
    why = population_incompatibility(configs)
    if why:
        raise ValueError(f"these runs cannot share one population: {why}")
    mesh = mesh if mesh is not None else population_mesh(len(configs), devices, runs=runs)
    check_batch_divisible(configs[0].train.batch_size, mesh)
    check_mesh_processes(mesh)
    writer = jax.process_index() == min(int(d.process_index) for d in mesh.devices.flat)
    opened = []
    try:
        if writer:
            opened = [open_run(c, d, resume=resume, fresh=fresh, write=True) for c, d in zip(configs, run_dirs)]
        barrier(f"ibjax population {run_dirs[0]}", mesh)
        if not writer:
            opened = [open_run(c, d, resume=resume, fresh=fresh, write=False) for c, d in zip(configs, run_dirs)]
        done = {int((rd.manifest() or {}).get("epoch", 0)) if resumed else 0 for rd, resumed in opened}
        if len(done) > 1:
            raise ValueError(f"the members are checkpointed after different epochs ({sorted(done)}): resume them one "
                             "by one with run_study (or experiments.sweep, which does)")
        return _run_population(configs, opened, progress, mesh, plots)
    except BaseException:
        if writer:
            for rd, resumed in opened:
                if not resumed:
                    rd.discard_failed_start()
        raise


def _run_population(configs, opened, progress: bool, mesh: Mesh, plots: bool = True) -> list[dict]:
    recorders = [RunRecorder(c, rd, resumed, progress, mesh, plots, label=f"[run {r}] ")
                 for r, (c, (rd, resumed)) in enumerate(zip(configs, opened))]
    with contextlib.ExitStack() as stack:
        for rec in recorders:
            stack.enter_context(rec)
        if progress:
            LOGGER.info("population of %d runs on %s", len(configs), describe_mesh(mesh))
        with phase(f"setting up {len(configs)} runs (data, attacks, poisoning plans, networks)",
                   enabled=progress) as setup_phase:
            pop = build_population(configs, mesh=mesh, progress=progress)
        for rec in recorders:
            rec.start(setup_phase.seconds)
        state = stack_states([rec.restore(init_run_state(m)) for rec, m in zip(recorders, pop.members)], mesh)
        config = pop.config
        epochs = config.train.epochs
        mi_epochs = set(config.mi_epochs) if config.offline else set()
        embed_epochs = set(config.resolved_embed_epochs)
        first = True
        for epoch in range(int(to_host(state.epoch)[0]) + 1, epochs + 1):
            t_epoch = time.perf_counter()
            bar = Progress(f"epoch {epoch}/{epochs} train ({pop.size} runs)", pop.steps_per_epoch, "step",
                           enabled=progress, first_is_compile=first)
            try:
                state, records = run_population_epoch(state, pop, progress=bar)
            except FloatingPointError as err:
                raise FloatingPointError(f"epoch {epoch}: {err}; the last good checkpoints (epoch {epoch - 1}) are "
                                         "kept") from err
            finally:
                bar.close()
            train_s = time.perf_counter() - t_epoch
            for rec in records:
                rec["train_s"] = train_s
            if epoch in mi_epochs:
                t_mi = time.perf_counter()
                with phase(f"epoch {epoch}: MI of {pop.size} runs x {pop.members[0].num_groups} groups "
                           f"({config.feature_mode} features)", enabled=progress):
                    res = population_network_mi([jax.random.fold_in(m.keys.mi, epoch) for m in pop.members],
                                                state.train.variables, pop, progress=progress, label=f"epoch {epoch} ")
                mi_s = time.perf_counter() - t_mi
                for rec, record, r in zip(recorders, records, res):
                    rec.add_mi(epoch, r, mi_s, record)
            host = jax.tree.map(to_host, state)
            if epoch in embed_epochs:
                for r, (rec, m) in enumerate(zip(recorders, pop.members)):
                    rec.add_clustering(epoch, *representation_clustering(
                        clustering_key(m.keys.train, epoch), member_of(host.train.variables, r, mesh), m,
                        config.embed_points))
            wall_s = time.perf_counter() - t_epoch
            for r, (rec, record) in enumerate(zip(recorders, records)):
                record["wall_s"] = wall_s
                rec.record(epoch, member_of(host, r), record)
            first = False
    return [rec.finish(class_names=m.class_names) for rec, m in zip(recorders, pop.members)]


def run_many(configs: Sequence[StudyConfig], run_dirs: Sequence[str], *, max_population: Optional[int] = None,
             populations: bool = True, progress: bool = True, devices: Optional[int] = None) -> list[dict]:
    """Run (or resume, or read when finished: ``resume="auto"``) many studies, in populations where
    they are compatible and one by one otherwise. Returns the summaries in the order of ``configs``.

    Runs join a population only with runs in the same state (all new, or all checkpointed after the
    same unfinished epoch); finished runs are read again alone, which costs no training.
    """
    configs, run_dirs = list(configs), list(run_dirs)
    states = []
    for d in run_dirs:
        rd = RunDirectory(d)
        m = rd.manifest() or {}
        states.append("finished" if m.get("finished") else int(m.get("epoch", 0)) if rd.checkpointed() else 0)
    groups = (group_populations(configs, max_population, keys=states) if populations
              else [[i] for i in range(len(configs))])
    out: list = [None] * len(configs)
    for group in groups:
        if len(group) > 1 and states[group[0]] != "finished":
            summaries = run_population([configs[i] for i in group], [run_dirs[i] for i in group], resume="auto",
                                       progress=progress, devices=devices)
        else:
            summaries = [run_study(configs[i], run_dirs[i], resume="auto", progress=progress, devices=devices)
                         for i in group]
        for i, s in zip(group, summaries):
            out[i] = s
    return out
