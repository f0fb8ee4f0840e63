"""One run of the study: config, presets, set-up, pure epoch steps, and the recording runner.

- :mod:`~ibjax.study.config`: :class:`StudyConfig`, the single source of truth (the CLI is generated
  from it), its JSON round trip, diff and data-free checks.
- :mod:`~ibjax.study.presets`: the named configs ``default``, ``reference``, ``fast``, ``cpu``.
- :mod:`~ibjax.study.state`: :class:`StudySetup` (fixed for a run) and :class:`RunState` (the typed,
  checkpointed pytree).
- :mod:`~ibjax.study.setup`: :func:`build_setup`, data to device arrays with every check first.
- :mod:`~ibjax.study.population`: which runs (seed, poison ratio, noise level) can train as one
  vmapped population, and the stacking of their set-ups and states (a single run is a population
  of one: there is no other path).
- :mod:`~ibjax.study.steps`: the pure steps over a population, :func:`run_epoch`,
  :func:`estimate_network_mi`, :func:`representation_clustering`.
- :mod:`~ibjax.study.runner`: :func:`run_study` (one member), :func:`run_population`,
  :func:`run_many` (populations where they fit, else one by one), the recording layer
  (checkpoints, files, logs), and :func:`finalize`; :mod:`~ibjax.study.rundir` the run directory's
  safety rules; :mod:`~ibjax.study.report` the plots and summary.md.
"""

from ibjax.study.config import (
    REFERENCE_MI_EPOCHS,
    AnalysisConfig,
    AttackConfig,
    DataConfig,
    EmbeddingConfig,
    StealthConfig,
    StudyConfig,
    StudyMIConfig,
    check_config,
    config_diff,
    config_from_dict,
    config_to_dict,
    load_config,
)
from ibjax.study.population import PopulationSetup, build_population, stack_states
from ibjax.study.presets import PRESETS, preset
from ibjax.study.runner import RESUMABLE_CHANGES, finalize, run_many, run_population, run_study
from ibjax.study.setup import build_setup
from ibjax.study.state import RunKeys, RunState, StudySetup, init_run_state
from ibjax.study.steps import FreshPairs, estimate_network_mi, representation_clustering, run_epoch

__all__ = [
    "StudyConfig",
    "DataConfig",
    "AttackConfig",
    "StudyMIConfig",
    "AnalysisConfig",
    "StealthConfig",
    "EmbeddingConfig",
    "REFERENCE_MI_EPOCHS",
    "PRESETS",
    "preset",
    "check_config",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "build_setup",
    "StudySetup",
    "PopulationSetup",
    "build_population",
    "stack_states",
    "RunKeys",
    "RunState",
    "init_run_state",
    "run_epoch",
    "FreshPairs",
    "estimate_network_mi",
    "representation_clustering",
    "run_study",
    "run_population",
    "run_many",
    "finalize",
    "RESUMABLE_CHANGES",
]
