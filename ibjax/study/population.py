"""Populations: which runs can train as one program, and how their set-ups and states are stacked.

Every run of the study is a population (:mod:`ibjax.study.steps` and :mod:`ibjax.study.runner` know
no other path): a single run is a population of one on a ``(runs, data)`` mesh of shape ``(1, D)``.
R members stack their run states along a leading member axis and train with one ``vmap``-ed, jitted
step: one compiled program, R small networks batched into large kernels, spread over the devices of a
``("runs", "data")`` mesh (:func:`ibjax.parallel.population_mesh`: members split over ``"runs"``,
each member's batch split over ``"data"``). Members may differ in:

- ``seed``: initialisation, shuffles, noise, poisoning choices and estimator keys;
- ``poison.ratio``: the poisoning plan (flags, labels, MI groups) is per member;
- ``model.gamma_xt`` / ``model.gamma_ty``: a level that differs between members becomes a traced
  per-member value (:func:`ibjax.models.with_noise_levels`) instead of a static module field. It
  must then be > 0 for every member: a static level of 0 skips the noise draw, which a traced one
  cannot, and the member would no longer draw what it draws alone.

Everything else (data set, attack and its options, network, recipe, estimators, MI epochs, ...)
must be equal (:func:`population_incompatibility` names the difference). Online critics train per
member inside the same vmapped step; label-consistent perturbations, computed per member against
its own clean model, are stacked on the member axis. TrojanNN optimises its trigger pattern per run,
and the pattern is a static part of the compiled trigger, so a TrojanNN run is a population of one.

This module holds only what is population-specific: the compatibility check and the stacking
(:func:`build_population`, :func:`stack_states`, :func:`member_of`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from ibjax.models import NOISE_FIELDS
from ibjax.parallel import put_members, put_replicated, to_host
from ibjax.pipeline import DeviceData
from ibjax.study.config import StudyConfig, check_config, config_diff, flatten_config
from ibjax.study.setup import build_attack, build_setup
from ibjax.study.state import RunState, StudySetup

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
    """Why ``config`` cannot share a population with other runs (None if it can; a run alone always
    can). Raises ValueError for a bad config."""
    check_config(config)
    if build_attack(config).optimised_pattern:
        return (f"attack {config.attack.name!r} optimises its trigger pattern per run (a static part of the compiled "
                "trigger)")
    return None


def _noise_class(config: StudyConfig) -> tuple:
    # A level of 0 is static (no draw); levels > 0 may be traced. Mixing both would change draws.
    return tuple(getattr(config.model, f) <= 0 for f in NOISE_FIELDS)


def population_incompatibility(configs: Sequence[StudyConfig]) -> Optional[str]:
    """Why ``configs`` cannot train as one population (None if they can)."""
    if not configs:
        return "no runs"
    if len(configs) == 1:
        check_config(configs[0])
        return None
    for i, c in enumerate(configs):
        why = member_incompatibility(c)
        if why:
            return f"run {i} ({c.attack.name}, seed {c.seed}): {why}"
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


@dataclasses.dataclass(frozen=True, eq=False)
class PopulationSetup:
    """Everything fixed for a population of R runs (R = 1 for a single run).

    Attributes:
      members: each member's own :class:`~ibjax.study.state.StudySetup` (its plan, keys, attack,
        network with its static noise levels; data sets on the population's mesh, images shared).
      mesh: the ``("runs", "data")`` mesh.
      model: member 0's network; the levels named in ``varying`` are replaced per member.
      varying: noise fields that differ between members (traced per member).
      noise: f32[R, len(varying)], the members' levels of those fields (replicated).
      train_data, clean_test, triggered_test: the data sets with a member axis on every field but
        the images (shared): labels, flags, trigger keys, perturbation rows per member, and the
        perturbation table per member where an attack has one (f32[R, P + 1, H, W, C], padded to the
        longest member's P).
      group_masks: bool[R, G, N], each member's MI groups (replicated; the online critics' members).
    """

    members: tuple[StudySetup, ...]
    mesh: Mesh
    model: nn.Module
    varying: tuple[str, ...]
    noise: jax.Array
    train_data: DeviceData
    clean_test: DeviceData
    triggered_test: DeviceData
    group_masks: jax.Array

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

    def group_names(self, r: int) -> tuple[str, ...]:
        """Member r's group names as error messages name them (prefixed with the member in a population)."""
        names = self.members[r].plan.group_names
        return tuple(names) if self.size == 1 else tuple(f"run {r} {g}" for g in names)


def _stack_data(datas: Sequence[DeviceData], mesh: Mesh) -> DeviceData:
    """One data set with a member axis on labels, flags, trigger keys and perturbation rows (and on
    the perturbation table when a member has one); images from member 0."""
    first = datas[0]
    stacked = {f: np.stack([to_host(getattr(d, f)) for d in datas])
               for f in ("labels", "poisoned", "perturbation_row", "trigger_key")}
    tables = [to_host(d.perturbations) for d in datas]
    if max(len(t) for t in tables) > 1:  # an attack with perturbations: each member's own table
        rows = max(len(t) for t in tables)
        stacked["perturbations"] = np.stack([np.pad(t, ((0, rows - len(t)),) + ((0, 0),) * (t.ndim - 1))
                                             for t in tables])
    return first.replace(**put_replicated(stacked, mesh))


def build_population(configs: Sequence[StudyConfig], *, mesh: Mesh, progress: bool = True,
                     precomputed: Optional[Sequence[Optional[np.ndarray]]] = None,
                     keep: Optional[Sequence[Optional[Callable[[np.ndarray], None]]]] = None) -> PopulationSetup:
    """Build every member's set-up (all checks first) on ``mesh`` and the stacked data sets.

    ``precomputed[r]`` / ``keep[r]`` are member r's clean-model array and where to keep it, as
    :func:`ibjax.study.setup.build_setup` takes them (label-consistent perturbations are computed
    member by member, each against its own clean model).

    Raises ValueError if the configs cannot share a population (:func:`population_incompatibility`).
    """
    why = population_incompatibility(configs)
    if why:
        raise ValueError(f"these runs cannot share one population: {why}")
    precomputed = list(precomputed) if precomputed is not None else [None] * len(configs)
    keep = list(keep) if keep is not None else [None] * len(configs)
    members = []
    for i, config in enumerate(configs):
        setup = build_setup(config, precomputed=precomputed[i], keep=keep[i], progress=progress and i == 0,
                            mesh=mesh)
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
        group_masks=put_replicated(np.stack([np.asarray(m.plan.group_masks, bool) for m in members]), mesh),
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
