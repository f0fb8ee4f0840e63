"""Typed records of a run: an epoch's record, an MI history per quantity, and the run's history.

In memory a run keeps :class:`RunHistory`: its :class:`EpochRecord` s, one :class:`MIHistory` per
quantity (the :class:`~ibjax.mi.MIResult` fields of every group stacked over groups x epochs, with a
mask of which (group, epoch) entries exist), the silhouettes and the timings. JSON exists only at the
run directory's boundary (``metrics.jsonl``, ``mi.json``, ``clustering.json`` and the checkpoint's
metadata): :meth:`RunHistory.to_json` / :meth:`RunHistory.from_json` carry a schema version, and an
unknown version is a one-line error saying what to do.

``mi.json`` keeps its layout, ``{quantity: {group: {str(epoch): {field: value}}}}``, so files written
before these types load as they are (schema 1: the same layout without a version mark).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

__all__ = ["SCHEMA_VERSION", "SchemaError", "EpochRecord", "MIHistory", "RunHistory", "as_mi_histories",
           "check_schema"]

SCHEMA_VERSION = 2
"""Version of the run directory's record files. 1: before typed records (the same layouts, no mark);
2: ``schema`` in the checkpoint metadata and the manifest."""


class SchemaError(ValueError):
    """A run directory's records of a version this ibjax cannot read."""


def check_schema(version: Any, where: str) -> int:
    """``version`` (None: schema 1, files from before the mark) as an int this ibjax reads, or a
    :class:`SchemaError` naming it and what to do."""
    v = 1 if version is None else version
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= SCHEMA_VERSION:
        raise SchemaError(f"{where} holds records of schema version {version!r}; this ibjax reads versions 1.."
                          f"{SCHEMA_VERSION}: upgrade ibjax to a version that reads it, or start a new run")
    return v


# --------------------------------------------------------------------------------------------------
# One epoch


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    """What one epoch of a run measured.

    Attributes:
      epoch: 1-based epoch.
      train_accuracy: accuracy on the epoch's (poisoned) training batches.
      train_loss: their mean cross-entropy, nats.
      class_loss: per-class mean cross-entropy by training label, nats.
      lr: the network's learning rate at the epoch's first step; ``lr_last`` at its last.
      test_accuracy: clean test accuracy; ``test_loss`` its mean cross-entropy (nats).
      asr: attack success rate on triggered test images.
      train_s, mi_s, wall_s: seconds spent training, estimating MI (MI epochs only) and in the whole
        epoch.
      extra: any other measurement (a JSON-ready mapping), kept as given.

    A field left at None (or empty) was not measured: :meth:`to_json` leaves it out (a measured NaN
    is kept).
    """

    epoch: int
    train_accuracy: Optional[float] = None
    train_loss: Optional[float] = None
    class_loss: tuple[float, ...] = ()
    lr: Optional[float] = None
    lr_last: Optional[float] = None
    test_accuracy: Optional[float] = None
    test_loss: Optional[float] = None
    asr: Optional[float] = None
    train_s: Optional[float] = None
    mi_s: Optional[float] = None
    wall_s: Optional[float] = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "EpochRecord":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "class_loss" in kwargs:
            kwargs["class_loss"] = tuple(float(v) for v in kwargs["class_loss"])
        if "epoch" not in kwargs:
            raise SchemaError(f"an epoch record without 'epoch': {sorted(d)}")
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in names})

    def to_json(self) -> dict:
        out = {"epoch": self.epoch}
        for f in dataclasses.fields(self):
            if f.name in ("epoch", "extra"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                if v:
                    out[f.name] = list(v)
            elif v is not None:
                out[f.name] = v
        out.update(self.extra)
        return out

    def get(self, name: str, default: Any = None) -> Any:
        """A measurement by name (a field or an ``extra`` entry): what plots and writers read."""
        if name in self.extra:
            return self.extra[name]
        return getattr(self, name, default) if name != "extra" else default


# --------------------------------------------------------------------------------------------------
# One quantity's MI over groups x epochs

_INT_FIELDS = ("best_epoch", "candidate")
_BOOL_FIELDS = ("converged",)


def _scalar(name: str, v: Any) -> float:
    """A record's scalar as float64: a number (NaN for anything else: None, text, a boolean where a
    value belongs, which a read then reports); a boolean field's True/False as 1/0."""
    if name in _BOOL_FIELDS:
        return float(v) if isinstance(v, (bool, np.bool_)) else math.nan
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return math.nan
    return float(v)


@dataclasses.dataclass(frozen=True, eq=False)
class MIHistory:
    """One quantity's estimates (nats): every field of the run's per-group records stacked over
    groups x epochs.

    Attributes:
      groups: the group names, in the order of axis 0.
      epochs: the measured epochs (1-based, increasing), axis 1.
      fields: ``{name: array [G, E, ...]}``: scalar fields (``train``, ``heldout``, ``heldout_se``,
        ``cap``, ``best_epoch``, ...) as float64 ``[G, E]``; sequence fields (``trajectory``,
        ``validation``) as object ``[G, E]`` arrays of float64 vectors.
      present: ``{name: bool [G, E]}``, which entries hold the field (online reads hold only
        ``heldout``; a group may miss an epoch).
    """

    groups: tuple[str, ...]
    epochs: tuple[int, ...]
    fields: Mapping[str, np.ndarray]
    present: Mapping[str, np.ndarray]

    @classmethod
    def empty(cls) -> "MIHistory":
        return cls((), (), {}, {})

    # --- JSON boundary -----------------------------------------------------------------------------

    @classmethod
    def from_json(cls, d: Mapping[str, Mapping[Any, Mapping[str, Any]]], where: str = "MI history") -> "MIHistory":
        """From ``{group: {epoch: {field: value}}}`` (mi.json's layout; epoch keys str or int)."""
        if not isinstance(d, Mapping):
            raise SchemaError(f"{where} must map group names to their epochs, got {type(d).__name__}")
        groups = tuple(d)
        epochs = sorted({int(e) for g in groups for e in d[g]})
        out = cls(groups, (), {}, {})  # every group in the file's order, whatever epochs it has
        for e in epochs:
            out = out.with_epoch(e, {g: d[g][k] for g in groups for k in d[g] if int(k) == e})
        return out

    def to_json(self) -> dict:
        """``{group: {str(epoch): {field: value}}}`` with only the entries present."""
        out: dict = {}
        for gi, g in enumerate(self.groups):
            per = {}
            for ei, e in enumerate(self.epochs):
                entry = self.entry(g, e, _indices=(gi, ei))
                if entry is not None:
                    per[str(e)] = entry
            out[g] = per
        return out

    # --- building ----------------------------------------------------------------------------------

    def with_epoch(self, epoch: int, entries: Mapping[str, Mapping[str, Any]]) -> "MIHistory":
        """This history with ``entries`` (``{group: {field: value}}``) recorded at ``epoch`` (a
        recorded (group, epoch) entry is replaced)."""
        groups = list(self.groups) + [g for g in entries if g not in self.groups]
        epochs = sorted(set(self.epochs) | {int(epoch)})
        gpos, epos = {g: i for i, g in enumerate(groups)}, {e: i for i, e in enumerate(epochs)}
        names = list(self.fields) + [n for ent in entries.values() for n in ent if n not in self.fields]
        names = list(dict.fromkeys(names))
        shape = (len(groups), len(epochs))
        fields, present = {}, {}
        old_g = [gpos[g] for g in self.groups]
        old_e = [epos[e] for e in self.epochs]
        for n in names:
            seq = n in self.fields and self.fields[n].dtype == object or any(
                isinstance(ent.get(n), (list, tuple, np.ndarray)) for ent in entries.values() if n in ent)
            arr = np.empty(shape, object) if seq else np.full(shape, np.nan)
            has = np.zeros(shape, bool)
            if n in self.fields:
                arr[np.ix_(old_g, old_e)] = self.fields[n]
                has[np.ix_(old_g, old_e)] = self.present[n]
            e_i = epos[int(epoch)]
            for g, ent in entries.items():
                if n in ent:
                    v = ent[n]
                    arr[gpos[g], e_i] = np.asarray(v, np.float64) if seq else _scalar(n, v)
                    has[gpos[g], e_i] = True
                elif n in self.fields:
                    has[gpos[g], e_i] = False
            fields[n], present[n] = arr, has
        return MIHistory(tuple(groups), tuple(epochs), fields, present)

    # --- reading -----------------------------------------------------------------------------------

    def entry(self, group: str, epoch: int, _indices: Optional[tuple[int, int]] = None) -> Optional[dict]:
        """The record of ``group`` at ``epoch`` as a JSON-ready dict, or None if it was not measured."""
        if _indices is None:
            if group not in self.groups or int(epoch) not in self.epochs:
                return None
            _indices = (self.groups.index(group), self.epochs.index(int(epoch)))
        gi, ei = _indices
        out = {}
        for n, arr in self.fields.items():
            if not self.present[n][gi, ei]:
                continue
            v = arr[gi, ei]
            if arr.dtype == object:
                out[n] = np.asarray(v).tolist()
            elif n in _BOOL_FIELDS + _INT_FIELDS and math.isnan(v):
                out[n] = None  # held, but not a value of its type
            elif n in _BOOL_FIELDS:
                out[n] = bool(v)
            elif n in _INT_FIELDS:
                out[n] = int(v)
            else:
                out[n] = float(v)
        return out or None

    def epochs_of(self, group: str, field: str = None) -> tuple[int, ...]:
        """The epochs at which ``group`` was measured (holding ``field``, if given)."""
        if group not in self.groups:
            return ()
        gi = self.groups.index(group)
        masks = [self.present[field]] if field else list(self.present.values())
        has = np.any([m[gi] for m in masks], axis=0) if masks else np.zeros(len(self.epochs), bool)
        return tuple(e for e, h in zip(self.epochs, has) if h)

    def values(self, field: str, groups: Optional[Sequence[str]] = None,
               epochs: Optional[Sequence[int]] = None) -> np.ndarray:
        """float64 ``[len(groups), len(epochs)]`` of a scalar field, NaN where absent."""
        gi = [self.groups.index(g) for g in (groups if groups is not None else self.groups)]
        ei = [self.epochs.index(int(e)) for e in (epochs if epochs is not None else self.epochs)]
        if field not in self.fields:
            return np.full((len(gi), len(ei)), np.nan)
        arr = self.fields[field][np.ix_(gi, ei)].astype(np.float64)
        return np.where(self.present[field][np.ix_(gi, ei)], arr, np.nan)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, MIHistory) and self.to_json() == other.to_json()


def as_mi_histories(mi: Mapping[str, Any]) -> dict[str, MIHistory]:
    """``{quantity: MIHistory}`` from typed histories or mi.json-shaped mappings (other code's MI
    curves), for the functions that read histories."""
    return {q: h if isinstance(h, MIHistory) else MIHistory.from_json(h, f"MI history {q!r}") for q, h in mi.items()}


# --------------------------------------------------------------------------------------------------
# The run


@dataclasses.dataclass
class RunHistory:
    """Everything a run has recorded so far (in memory; its files are written from it).

    Attributes:
      records: one :class:`EpochRecord` per completed epoch.
      mi: ``{quantity name: MIHistory}`` (offline quantities by name, online ones by their
        ``online_name``).
      clustering: ``{epoch: {group: silhouette}}``.
      timings: named seconds (``setup_s``, ``run_s``).
    """

    records: list[EpochRecord] = dataclasses.field(default_factory=list)
    mi: dict[str, MIHistory] = dataclasses.field(default_factory=dict)
    clustering: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def add_mi(self, quantity: str, epoch: int, entries: Mapping[str, Mapping[str, Any]]) -> None:
        self.mi[quantity] = self.mi.get(quantity, MIHistory.empty()).with_epoch(epoch, entries)

    def mi_json(self) -> dict:
        return {q: h.to_json() for q, h in self.mi.items()}

    def clustering_json(self) -> dict:
        return {str(e): dict(s) for e, s in sorted(self.clustering.items())}

    def to_json(self) -> dict:
        """The whole history as one JSON-ready dict (the checkpoint's metadata), versioned."""
        return {"schema": SCHEMA_VERSION, "metrics": self.records_json(), "mi": self.mi_json(),
                "clustering": self.clustering_json(), "timings": dict(self.timings)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str = "the run's history") -> "RunHistory":
        """From :meth:`to_json`'s output or the files of a run directory (schema 1 or 2)."""
        check_schema(d.get("schema"), where)
        return cls(records=[EpochRecord.from_json(r) for r in d.get("metrics", ())],
                   mi=as_mi_histories(d.get("mi", {})),
                   clustering={int(e): dict(s) for e, s in d.get("clustering", {}).items()},
                   timings=dict(d.get("timings", {})))

    def records_json(self) -> list[dict]:
        return [r.to_json() for r in self.records]
