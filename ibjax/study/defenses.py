"""The defences (:mod:`ibjax.defenses`) on a population's trained networks: each member's inputs as
its network saw them, its clean and triggered test images, and the registry's records.

Members run one after another: the methods are pure functions (a population's member axis vmaps
through them), but each member's sample sets differ in which rows are poisoned, and one member's
arrays at a time keep the host memory of a large population bounded.
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ibjax.defenses.registry import DefenseInputs, run_defenses
from ibjax.pipeline import DeviceData, gather_batch
from ibjax.records import MIHistory
from ibjax.study.population import PopulationSetup, member_of
from ibjax.study.state import StudySetup

__all__ = ["member_defense_inputs", "population_defenses", "DEFENSES_FILE"]

DEFENSES_FILE = "defenses.json"
"""Where a run keeps its defences' records."""


@functools.partial(jax.jit, static_argnames=("trigger",))
def _inputs(data: DeviceData, index, trigger):
    return gather_batch(data, index, trigger)[0]


def _images(data: DeviceData, trigger, chunk: int = 1000) -> np.ndarray:
    n = int(np.asarray(data.labels).shape[0])
    return np.concatenate([np.asarray(_inputs(data, jnp.arange(s, min(s + chunk, n)), trigger))
                           for s in range(0, n, chunk)])


def member_defense_inputs(member: StudySetup, variables, sample_losses: Optional[np.ndarray] = None,
                          mi: Optional[Mapping[str, MIHistory]] = None) -> DefenseInputs:
    """:class:`~ibjax.defenses.registry.DefenseInputs` of one run: its training inputs as its network
    saw them, its clean test images and the same images triggered, the per-sample training losses of
    its epochs (f[E, N], as the runner keeps them) and its MI history, if given."""
    cfg = member.config
    return DefenseInputs(
        model=member.model, model_name=cfg.model.name, variables=variables,
        train_images=_images(member.train_data, member.attack.train_trigger),
        train_labels=np.asarray(member.plan.labels), poisoned=np.asarray(member.plan.poisoned, bool),
        num_classes=member.num_classes, target=cfg.poison.target,
        test_images=_images(member.clean_test, member.attack.test_trigger),
        test_labels=np.asarray(member.clean_test.labels),
        triggered_images=_images(member.triggered_test, member.attack.test_trigger),
        batch_size=cfg.train.eval_batch_size, sample_losses=sample_losses, mi=mi)


def population_defenses(keys: Sequence[jax.Array], host_variables, pop: PopulationSetup,
                        sample_losses: Optional[Sequence[Optional[np.ndarray]]] = None,
                        mi: Optional[Sequence[Optional[Mapping[str, MIHistory]]]] = None) -> list[dict]:
    """The config's ``analysis.defenses`` on every member (member r with ``keys[r]``,
    ``sample_losses[r]``, its per-sample training losses f[E, N], and ``mi[r]``, its MI history),
    from the stacked variables held on the host. One record dict per member (see
    :func:`ibjax.defenses.registry.run_defenses`)."""
    cfg = pop.config.analysis
    losses = list(sample_losses) if sample_losses is not None else [None] * pop.size
    mi = list(mi) if mi is not None else [None] * pop.size
    return [run_defenses(member_defense_inputs(m, member_of(host_variables, r), losses[r], mi[r]), cfg.defenses,
                         keys[r], cfg.defense_rules) for r, m in enumerate(pop.members)]
