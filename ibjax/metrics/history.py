"""Reading a run's MI history: which clean classes and epochs it holds, and its values and standard
errors as arrays.

The history is ``mi[quantity][group][str(epoch)] = {"train": float, "heldout": float|None,
"train_se": float|None, "heldout_se": float|None, ...}`` (nats), as a run stores it in ``mi.json``;
integer epoch keys are accepted too. Clean classes are the groups whose name starts with
``"class_"``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ibjax.metrics.names import (
    QUANTITIES,
    READS,
    STEALTH_TARGET_GROUPS,
    clean_group_key,
    is_clean_group,
    is_finite_number,
)

__all__ = ["clean_groups", "available_epochs"]

# check_read, entry_value, entry_se, history_entry and read_matrix are for the other metrics modules
# (stealth, comparison): public names, left out of __all__ and so out of ibjax.metrics.


def clean_groups(mi: Mapping[str, Any], quantity: str = "xt") -> list[str]:
    """Names of the clean-class groups (keys starting with ``"class_"``) of one quantity, sorted by
    class index where the suffix is an integer."""
    return sorted((g for g in mi[quantity] if is_clean_group(g)), key=clean_group_key)


def available_epochs(mi: Mapping[str, Any], quantities: Sequence[str] = QUANTITIES,
                     groups: Optional[Sequence[str]] = None) -> list[int]:
    """Epochs present for every given group (default: the stealth target groups and all clean
    classes) in every given quantity of the history, sorted."""
    common: Optional[set[int]] = None
    for q in quantities:
        if q not in mi:
            raise ValueError(f"MI history has no quantity {q!r} (has {sorted(mi)})")
        names = list(groups) if groups is not None else [*STEALTH_TARGET_GROUPS, *clean_groups(mi, q)]
        for g in names:
            if g not in mi[q]:
                raise ValueError(f"MI history {q!r} has no group {g!r} (has {sorted(mi[q])})")
            epochs = {int(e) for e in mi[q][g]}
            common = epochs if common is None else common & epochs
    return sorted(common or ())


def check_read(read: str) -> None:
    """ValueError unless ``read`` is one of :data:`~ibjax.metrics.names.READS`."""
    if read not in READS:
        raise ValueError(f"read must be one of {READS}, got {read!r}")


def entry_value(entry: Any, read: str, where: str) -> float:
    """The entry's ``read`` (nats); ValueError naming ``where`` when it is missing or not finite."""
    value = entry.get(read) if isinstance(entry, Mapping) else None
    if not is_finite_number(value):
        hint = ' (try read="train")' if read == "heldout" else ""
        raise ValueError(f"MI history has no finite {read!r} value at {where}: {value!r}{hint}")
    return float(value)


def entry_se(entry: Any, read: str) -> Optional[float]:
    """The entry's standard error of ``read`` (nats), None where absent (old files) or not finite."""
    se = entry.get(f"{read}_se") if isinstance(entry, Mapping) else None
    return float(se) if is_finite_number(se) and float(se) >= 0 else None


def history_entry(mi: Mapping[str, Any], quantity: str, group: str, epoch: int) -> Any:
    """The entry of ``quantity`` / ``group`` at ``epoch``, stored under a string or an integer key."""
    hist = mi[quantity][group]
    return hist[str(epoch)] if str(epoch) in hist else hist[epoch]


def read_matrix(mi: Mapping[str, Any], quantity: str, groups: Sequence[str], epochs: Sequence[int],
                read: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Values f32[G, E] (nats) of ``groups`` at ``epochs``, and their standard errors f32[G, E], or
    None when any one of them lacks a standard error."""
    values = np.zeros((len(groups), len(epochs)), np.float32)
    ses = np.zeros_like(values)
    complete = True
    for i, g in enumerate(groups):
        for j, e in enumerate(epochs):
            entry = history_entry(mi, quantity, g, e)
            values[i, j] = entry_value(entry, read, f"{quantity}/{g}/epoch {e}")
            se = entry_se(entry, read)
            complete &= se is not None
            ses[i, j] = se if se is not None else 0.0
    return values, (ses if complete else None)
