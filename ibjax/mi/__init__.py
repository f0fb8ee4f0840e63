"""Batched InfoNCE mutual-information estimation: every group's critic trained in one jitted call.

One concern per module:

- :mod:`ibjax.mi.critics`: the critic families f(a, b) (concatenation, separable, Gaussian) as pure
  functions of a params pytree, and their registry :data:`~ibjax.mi.critics.CRITICS`.
- :mod:`ibjax.mi.gaussian`: the Gaussian critic, fitted in closed form (moments, canonical
  correlations) instead of trained.
- :mod:`ibjax.mi.bounds`: the variational lower bounds (InfoNCE, NWJ, DV) as functions of critic
  scores, in nats.
- :mod:`ibjax.mi.groundtruth`: tasks whose MI is known exactly, to measure the estimator against.
- :mod:`ibjax.mi.discrete`: exact entropy and MI of discrete variables from counts (no critic).
- :mod:`ibjax.mi.config`: :class:`MIConfig` (critic, optimiser and protocol parts; its defaults are
  ibjax's estimator, :data:`XT_CONFIG`, and :data:`TY_CONFIG` at the I(T;Y_pred) sizes), the
  authors' exact settings (:data:`XT_REFERENCE`, :data:`TY_REFERENCE`), named presets
  (:data:`MI_PRESETS`: ``config="reference"``), the authors' batches-per-epoch rule, the candidates of model selection (:class:`Candidate`, :func:`candidate_configs`).
- :mod:`ibjax.mi.training`: one critic step for all groups (:func:`init`, :func:`update`) and the
  authors' plateau rule (:func:`end_epoch`), for use inside other loops.
- :mod:`ibjax.mi.online`: critics trained alongside a network on per-group ring buffers
  (:func:`update_buffered`).
- :mod:`ibjax.mi.transform`: per-coordinate input maps (standardisation, rank-Gaussianisation).
- :mod:`ibjax.mi.reliability`: the convergence verdict and the held-out read's standard error.
- :mod:`ibjax.mi.result`: :class:`MIResult`, what the estimators return (nats).
- :mod:`ibjax.mi.selection`: per group, the candidate critic with the best validation read
  (:func:`select_by_validation`).
- :mod:`ibjax.mi.estimator`: the offline estimators :func:`estimate_mi`, :func:`estimate_mi_groups`
  and the general :func:`estimate_mi_sampled` (selecting among ``MIConfig.candidates`` if any).
"""

from ibjax.mi import bounds, critics, discrete, gaussian, groundtruth
from ibjax.mi.config import (
    CANDIDATE_SECTIONS,
    DEFAULT_CANDIDATES,
    MI_ALIASES,
    MI_PRESETS,
    TY_CONFIG,
    TY_REFERENCE,
    XT_CONFIG,
    XT_REFERENCE,
    Candidate,
    CriticConfig,
    MIConfig,
    OptimiserConfig,
    ProtocolConfig,
    batches_per_epoch,
    candidate_configs,
    resolve_config,
    split_sizes,
)
from ibjax.mi.estimator import (
    bank_pairs,
    check_groups,
    default_chunk,
    default_group_batch,
    estimate_mi,
    estimate_mi_groups,
    estimate_mi_sampled,
    gather_pairs,
    loader_batches,
)
from ibjax.mi.online import PairBuffer, buffer_init, update_buffered
from ibjax.mi.reliability import convergence_verdict, mean_and_se, trend
from ibjax.mi.result import MIResult
from ibjax.mi.selection import select_by_validation, validation_score
from ibjax.mi.training import CriticState, end_epoch, init, plateau_update, update
from ibjax.mi.transform import Marginals, apply_marginals, fit_marginals, rank_gaussianize

__all__ = [
    "MIConfig",
    "CriticConfig",
    "OptimiserConfig",
    "ProtocolConfig",
    "Candidate",
    "XT_REFERENCE",
    "TY_REFERENCE",
    "MI_PRESETS",
    "XT_CONFIG",
    "TY_CONFIG",
    "resolve_config",
    "batches_per_epoch",
    "split_sizes",
    "CANDIDATE_SECTIONS",
    "DEFAULT_CANDIDATES",
    "MI_ALIASES",
    "candidate_configs",
    "MIResult",
    "estimate_mi",
    "estimate_mi_groups",
    "estimate_mi_sampled",
    "gather_pairs",
    "bank_pairs",
    "check_groups",
    "default_chunk",
    "default_group_batch",
    "loader_batches",
    "CriticState",
    "init",
    "update",
    "end_epoch",
    "plateau_update",
    "PairBuffer",
    "buffer_init",
    "update_buffered",
    "Marginals",
    "fit_marginals",
    "apply_marginals",
    "rank_gaussianize",
    "trend",
    "convergence_verdict",
    "mean_and_se",
    "validation_score",
    "select_by_validation",
]
