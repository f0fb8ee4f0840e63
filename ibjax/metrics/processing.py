"""The data processing check: Y_pred is computed from T, which is computed from X, so I(X;Y_pred) <= I(X;T).

An estimate can break the inequality only by estimator error; :func:`data_processing_check` says,
per group and epoch, by how much I(X;Y_pred) exceeds I(X;T) and whether that excess is beyond
``z`` combined standard errors (a violation the estimates cannot explain), in nats. It needs a
history holding both quantities (``mi.quantities`` with ``xt`` and ``xy``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ibjax.metrics.history import check_read
from ibjax.records import as_mi_histories

__all__ = ["data_processing_check"]


def data_processing_check(mi: Mapping[str, Any], read: str = "heldout", z: float = 2.0) -> dict:
    """I(X;Y_pred) - I(X;T) for every group at every epoch both quantities hold, nats.

    Args:
      mi: the run's MI history (``{quantity: MIHistory}`` or mi.json's layout) with ``xt`` and ``xy``.
      read: "heldout" or "train".
      z: how many combined standard errors an excess must pass to count as a violation.

    Returns:
      ``{"read", "z", "groups": {group: {str(epoch): {"excess", "excess_se", "violated"}}},
      "violations": [(group, epoch), ...], "holds": bool, "checked": int}``. ``excess_se`` is None
      (and ``violated`` judged on the excess alone, > 0) where a standard error is missing.
    """
    check_read(read)
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    hist = as_mi_histories(mi)
    for q in ("xt", "xy"):
        if q not in hist:
            raise ValueError(f"the data processing check needs quantity {q!r} in the MI history (has {sorted(hist)}): "
                             "estimate it with mi.quantities including 'xt' and 'xy'")
    xt, xy = hist["xt"], hist["xy"]
    out: dict = {"read": read, "z": float(z), "groups": {}, "violations": [], "checked": 0}
    for g in (g for g in xt.groups if g in xy.groups):
        epochs = sorted(set(xt.epochs_of(g, read)) & set(xy.epochs_of(g, read)))
        if not epochs:
            continue
        a, b = xt.values(read, [g], epochs)[0], xy.values(read, [g], epochs)[0]
        sa, sb = xt.values(f"{read}_se", [g], epochs)[0], xy.values(f"{read}_se", [g], epochs)[0]
        per = {}
        for e, va, vb, ea, eb in zip(epochs, a, b, sa, sb):
            if not (np.isfinite(va) and np.isfinite(vb)):
                continue
            excess = float(vb - va)
            se = float(np.hypot(ea, eb)) if np.isfinite(ea) and np.isfinite(eb) else None
            violated = bool(excess > z * se) if se is not None else bool(excess > 0)
            per[str(e)] = {"excess": excess, "excess_se": se, "violated": violated}
            out["checked"] += 1
            if violated:
                out["violations"].append((g, int(e)))
        out["groups"][g] = per
    out["holds"] = not out["violations"]
    return out
