"""The estimators' result: :class:`MIResult`, every group's reads, trajectories and verdicts (nats)."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import numpy as np
from flax import struct

__all__ = ["MIResult"]


@struct.dataclass
class MIResult:
    """Estimates in nats, with a leading group axis G (absent from :func:`ibjax.mi.estimate_mi`'s result).

    Attributes:
      trajectory: f32[G, epochs], mean training-batch estimate of every epoch.
      validation: f32[G, epochs], the validation split's read every epoch (nan without one).
      train: f32[G], the authors' read: mean of the last ``read_epochs`` epochs' training-batch
        estimates (on the samples the critic trained on: the whole group when heldout_fraction = 0).
      heldout: f32[G], the bound on the held-out split with the selected critic (nan without a split).
      heldout_se: f32[G], its standard error (see :mod:`ibjax.mi.reliability`).
      best_epoch: int32[G], 0-based epoch of the critic the held-out read used.
      trend, trend_se: f32[G], the verdict's read (validation if any, else training) rise over the
        last ``config.convergence_window`` epochs, and its standard error (nats).
      converged: bool[G], the convergence verdict.
      final_lr: f32[G], the critic's learning rate after the last epoch.
      heldout_cap: f32[G], the largest value the held-out read can take (log of its read batch's rows
        for the all-pairs read, else as ``cap``).
      candidate: int32[G], which critic model selection kept (:func:`ibjax.mi.select_by_validation`):
        the index into :func:`ibjax.mi.candidate_configs` of the config (0: the config itself; always
        0 without ``candidates``).
      cap: the largest value the training bound can read (log(K + 1) for InfoNCE): the ceiling of
        ``trajectory``, ``validation`` and ``train``.
    """

    trajectory: jax.Array
    validation: jax.Array
    train: jax.Array
    heldout: jax.Array
    heldout_se: jax.Array
    best_epoch: jax.Array
    trend: jax.Array
    trend_se: jax.Array
    converged: jax.Array
    final_lr: jax.Array
    heldout_cap: jax.Array
    candidate: jax.Array
    cap: float = struct.field(pytree_node=False)

    def without(self, missing) -> "MIResult":
        """This result with the groups ``missing`` (bool[G]) blanked: every read and trajectory NaN,
        ``converged`` False, ``best_epoch`` and ``candidate`` -1. For groups a run does not have (a
        clean run's ``target_backdoor``), estimated on a stand-in so the batched call keeps its shape."""
        missing = np.asarray(missing, bool)

        def blank(x):
            x = np.array(x)
            m = missing.reshape(missing.shape + (1,) * (x.ndim - 1))
            fill = False if x.dtype == bool else (-1 if np.issubdtype(x.dtype, np.integer) else np.nan)
            return np.where(m, np.asarray(fill, x.dtype), x)

        return jax.tree.map(blank, self)

    def to_dict(self, group_names: Optional[Sequence[str]] = None):
        """Plain-Python view, per group: ``{"trajectory", "validation", "train", "heldout",
        "heldout_se", "converged", "cap", "heldout_cap", "best_epoch", "trend", "trend_se", "final_lr",
        "candidate"}``.

        With a group axis: a list of those dicts, or ``{name: dict}`` given ``group_names``; without
        one (from :func:`estimate_mi`): one dict.
        """
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "cap"}

        def one(g):
            d = {}
            for name, x in arrays.items():
                v = x if g is None else x[g]
                d[name] = v.tolist()
            d["converged"] = bool(d["converged"])
            d["best_epoch"] = int(d["best_epoch"])
            d["candidate"] = int(d["candidate"])
            d["cap"] = self.cap
            return d

        if arrays["train"].ndim == 0:
            return one(None)
        groups = [one(g) for g in range(arrays["train"].shape[0])]
        if group_names is None:
            return groups
        if len(group_names) != len(groups):
            raise ValueError(f"{len(group_names)} group names for {len(groups)} groups")
        return dict(zip(group_names, groups))
