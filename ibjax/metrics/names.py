"""Names of an MI history's parts and the one check of a stored number, shared by the metrics and
the plots. No jax import: :mod:`ibjax.plots` reads these without touching any array code.

An MI history (a run's ``mi.json``) has the layout ``mi[quantity][group][str(epoch)] = {"train":
float, "heldout": float|None, "train_se": float|None, "heldout_se": float|None, ...}``, values in
nats.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "QUANTITIES",
    "READS",
    "NORMALISATIONS",
    "STEALTH_TARGET_GROUPS",
    "STEALTH_COMPONENTS",
    "DEFAULT_STEALTH_EPOCHS",
    "is_clean_group",
    "clean_group_key",
    "is_finite_number",
]

QUANTITIES = ("xt", "ty")
"""The MI quantities the stealthiness metric reads: ``"xt"`` = I(X;T), ``"ty"`` = I(T;Y_pred), both
in nats (every quantity a study estimates, with its label and features, is in
:data:`ibjax.quantities.QUANTITIES`)."""

READS = ("heldout", "train")
"""Which value of an estimate is read: ibjax's held-out read, or the authors' training read."""

NORMALISATIONS = ("per_epoch", "joint")
"""Min-max normalisation of the stealth distance: the authors' per-epoch form, or over all epochs."""

STEALTH_TARGET_GROUPS = ("target_clean", "target")
"""Target groups whose trajectories the stealthiness metric compares with the clean classes'."""

STEALTH_COMPONENTS = tuple(f"{q}/{g}" for q in QUANTITIES for g in STEALTH_TARGET_GROUPS)
"""Names of the four stealthiness components, in the order they are summed and stored:
``("xt/target_clean", "xt/target", "ty/target_clean", "ty/target")``."""

DEFAULT_STEALTH_EPOCHS = (5, 40, 100)
"""The study's epochs of the stealthiness metric."""


def is_clean_group(name: str) -> bool:
    """Clean-class groups are named ``"class_<k>"``: every group whose name starts with ``"class_"``."""
    return name.startswith("class_")


def clean_group_key(name: str) -> tuple[int, int, str]:
    """Sort key of clean-class group names: by class index where the suffix is an integer
    (``class_2`` before ``class_10``), then the others by name."""
    suffix = name[len("class_"):]
    return (0, int(suffix), "") if suffix.isdigit() else (1, 0, suffix)


def is_finite_number(value: Any) -> bool:
    """True iff ``value`` is a real number (Python, NumPy or 0-d array) that is finite.

    None, strings, NaN and infinities are not. Booleans (Python and NumPy) are not numbers here: a
    ``True`` where a value or a standard error belongs is a broken file, not 1.0.
    """
    if value is None or isinstance(value, (bool, np.bool_, str, bytes)):
        return False
    dtype = getattr(value, "dtype", None)  # NumPy and jax arrays: only 0-d, non-boolean ones
    if dtype is not None and (np.dtype(dtype) == np.bool_ or getattr(value, "shape", ()) != ()):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
