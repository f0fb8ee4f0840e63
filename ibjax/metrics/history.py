"""Reading a run's MI history: which clean classes and epochs it holds, and its values and standard
errors as arrays.

The history is ``{quantity: MIHistory}`` (:class:`ibjax.records.MIHistory`: the reads of every
group stacked over groups x epochs, nats); the public functions also take the layout a run stores in
``mi.json``, ``mi[quantity][group][str(epoch)] = {"train": float, "heldout": float|None, "train_se":
..., "heldout_se": ..., ...}`` (integer epoch keys too), as other code's MI curves. Clean classes are
the groups whose name starts with ``"class_"``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ibjax.metrics.names import QUANTITIES, READS, STEALTH_TARGET_GROUPS, clean_group_key, is_clean_group
from ibjax.metrics.runs import pooled_mean
from ibjax.records import MIHistory, as_mi_histories

__all__ = ["clean_groups", "available_epochs", "seed_mean_history"]

# check_read and read_matrix are for the other metrics modules (stealth, comparison): public names,
# left out of __all__ and so out of ibjax.metrics.


def clean_groups(mi: Mapping[str, Any], quantity: str = "xt") -> list[str]:
    """Names of the clean-class groups (keys starting with ``"class_"``) of one quantity, sorted by
    class index where the suffix is an integer."""
    h = as_mi_histories({quantity: mi[quantity]})[quantity]
    return sorted((g for g in h.groups if is_clean_group(g)), key=clean_group_key)


def available_epochs(mi: Mapping[str, Any], quantities: Sequence[str] = QUANTITIES,
                     groups: Optional[Sequence[str]] = None) -> list[int]:
    """Epochs present for every given group (default: the stealth target groups and all clean
    classes) in every given quantity of the history, sorted."""
    common: Optional[set[int]] = None
    for q in quantities:
        if q not in mi:
            raise ValueError(f"MI history has no quantity {q!r} (has {sorted(mi)})")
        h = as_mi_histories({q: mi[q]})[q]
        names = list(groups) if groups is not None else [*STEALTH_TARGET_GROUPS, *clean_groups({q: h}, q)]
        for g in names:
            if g not in h.groups:
                raise ValueError(f"MI history {q!r} has no group {g!r} (has {sorted(h.groups)})")
            epochs = set(h.epochs_of(g))
            common = epochs if common is None else common & epochs
    return sorted(common or ())


def check_read(read: str) -> None:
    """ValueError unless ``read`` is one of :data:`~ibjax.metrics.names.READS`."""
    if read not in READS:
        raise ValueError(f"read must be one of {READS}, got {read!r}")


def read_matrix(mi: Mapping[str, MIHistory], quantity: str, groups: Sequence[str], epochs: Sequence[int],
                read: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Values f32[G, E] (nats) of ``groups`` at ``epochs`` of a typed history, and their standard
    errors f32[G, E], or None when any one of them lacks a standard error. ValueError naming the first
    entry without a finite ``read``."""
    h = mi[quantity]
    values = h.values(read, groups, epochs)
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        i, j = bad[0]
        entry = h.entry(groups[i], epochs[j]) or {}
        hint = ' (try read="train")' if read == "heldout" else ""
        raise ValueError(f"MI history has no finite {read!r} value at {quantity}/{groups[i]}/epoch {epochs[j]}: "
                         f"{entry.get(read)!r}{hint}")
    ses = h.values(f"{read}_se", groups, epochs)
    complete = bool(np.all(np.isfinite(ses) & (ses >= 0)))
    return values.astype(np.float32), (ses.astype(np.float32) if complete else None)


def seed_mean_history(histories: Sequence[Mapping[str, Any]]) -> dict[str, dict]:
    """The mean over runs (seeds) of several MI histories, in mi.json's layout, nats.

    For every quantity, group and epoch that at least one run holds: each read's mean over the runs
    with a finite value, and its standard error (:func:`ibjax.metrics.runs.pooled_mean`: the larger
    of the seeds' spread and the runs' own ``<read>_se`` combined; one run's own); ``"runs"`` counts
    them. Plots and metrics read the result as any history.
    """
    hists = [as_mi_histories(h) for h in histories]
    out: dict[str, dict] = {}
    for q in dict.fromkeys(q for h in hists for q in h):
        per = [h[q] for h in hists if q in h]
        groups = list(dict.fromkeys(g for h in per for g in h.groups))
        out[q] = {}
        for g in groups:
            epochs = sorted({e for h in per if g in h.groups for e in h.epochs_of(g)})
            out[q][g] = {}
            for e in epochs:
                entry: dict[str, Any] = {}
                for read in READS:
                    vals, ses = [], []
                    for h in per:
                        x = h.entry(g, e) if g in h.groups else None
                        v = None if x is None else x.get(read)
                        if v is not None and np.isfinite(v):
                            vals.append(float(v))
                            ses.append(x.get(f"{read}_se"))
                    if not vals:
                        continue
                    entry[read], entry[f"{read}_se"], _ = pooled_mean(vals, ses)
                    entry["runs"] = max(entry.get("runs", 0), len(vals))
                if entry:
                    out[q][g][str(e)] = entry
    return out
