"""A run directory and the rules that keep it safe: never delete what ibjax did not write, and a run
that fails before its first checkpoint leaves nothing that changes a later run.

Layout (every file ibjax writes is listed in the manifest ``run.json`` before it is written):

    run.json           the manifest: files written, whether a checkpoint exists, whether finished, and
                       ``format``, the version of the record files (:data:`ibjax.records.SCHEMA_VERSION`)
    config.json        the run's full config, written when the run starts (and again on a resume)
    metrics.jsonl, mi.json, clustering.json, stealth.json, summary.json, summary.md, embedding_<e>.npz,
    attack_precomputed.npy (label-consistent PGD perturbations or the TrojanNN patch), checkpoints/,
    plots/

Rules:
- A new run goes into a directory that does not exist, is empty, or holds only ibjax's files of a
  start that never reached its first checkpoint (those are removed). A directory with a
  checkpointed run needs ``resume`` (or ``fresh``, which removes ibjax's files of that run and
  nothing else); one with files ibjax did not write is refused, naming them.
- A run counts as checkpointed only once the manifest says so (set with its first checkpoint), so a
  run that failed before it is never "resumed" with its stale config.json; when a new run fails
  before that, its files are removed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any, Optional

import numpy as np

from ibjax.records import SCHEMA_VERSION, RunHistory, check_schema

__all__ = ["RunDirectory", "MANIFEST"]

MANIFEST = "run.json"
_FORMAT = SCHEMA_VERSION  # the manifest's "format": the version of the run's record files


def _atomic_write(path: str, content: str | bytes) -> None:
    """Write via a temporary file and a rename, so a reader (or a kill) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _npy_bytes(save, *args, **kwargs) -> bytes:
    buf = io.BytesIO()
    save(buf, *args, **kwargs)
    return buf.getvalue()


class RunDirectory:
    """One run's directory (see the module docstring for its rules).

    ``write=False`` makes every writing method a no-op: the other processes of a study that spans
    several (process 0 writes the run's files once; they only read).
    """

    def __init__(self, path: str | os.PathLike, write: bool = True):
        self.path = os.path.abspath(os.fspath(path))
        self.created = False
        self.writable = write

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # ---------------------------------------------------------------------------------------------
    # what is there

    def manifest(self) -> Optional[dict]:
        try:
            with open(self.file(MANIFEST)) as f:
                m = json.load(f)
            return m if isinstance(m, dict) and "files" in m else None
        except (OSError, json.JSONDecodeError):
            return None

    def entries(self) -> list[str]:
        return sorted(os.listdir(self.path)) if os.path.isdir(self.path) else []

    def foreign(self) -> list[str]:
        """Top-level entries ibjax did not write (not in the manifest)."""
        m = self.manifest()
        ours = {MANIFEST, *(m["files"] if m else ())}
        return [e for e in self.entries() if e not in ours and not e.startswith(".tmp-")]

    def checkpointed(self) -> bool:
        m = self.manifest()
        return bool(m and m.get("checkpointed")) and os.path.exists(self.file("config.json"))

    def describe(self) -> str:
        m = self.manifest() or {}
        return "a finished run" if m.get("finished") else f"a run checkpointed after epoch {m.get('epoch', '?')}"

    # ---------------------------------------------------------------------------------------------
    # lifecycle

    def prepare_new(self, fresh: bool = False) -> None:
        """Make the directory ready for a new run, or raise ValueError saying why it cannot be."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"{self.path!r} is a file, not a directory: choose another --out")
        foreign = self.foreign()
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ValueError(f"{self.path!r} holds files ibjax did not write ({shown}); ibjax never deletes those: "
                             "choose another --out")
        if self.checkpointed() and not fresh:
            raise ValueError(f"{self.path!r} already holds {self.describe()}; pass --resume to continue it, "
                             "--fresh to discard it, or choose another --out")
        if self.manifest() is not None:
            self.remove_own_files()
        try:
            os.makedirs(self.path, exist_ok=True)
            probe = self.file(".tmp-write-probe")
            with open(probe, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as err:
            raise ValueError(f"output directory {self.path!r} is not writable ({err.strerror or err}); "
                             "choose another --out") from err
        self.created = True
        self._write_manifest({"format": _FORMAT, "files": [], "checkpointed": False, "finished": False, "epoch": 0})

    def schema(self) -> int:
        """The version of the run's record files (the manifest's ``format``; 1 before it was kept
        up to date), or :class:`~ibjax.records.SchemaError` saying what to do with one this ibjax
        cannot read."""
        return check_schema((self.manifest() or {}).get("format"), self.path)

    def check_resumable(self) -> None:
        if not os.path.isdir(self.path):
            raise ValueError(f"cannot resume {self.path!r}: no such directory (start a new run with --out)")
        self.schema()
        if not self.checkpointed():
            why = ("it holds no ibjax run" if self.manifest() is None and not os.path.exists(self.file("config.json"))
                   else "its run never reached a first checkpoint")
            raise ValueError(f"cannot resume {self.path!r}: {why}; start a new run with --out")

    def remove_own_files(self) -> None:
        """Delete every file and folder the manifest lists (and the manifest), nothing else."""
        m = self.manifest()
        for name in (m or {}).get("files", []):
            p = self.file(name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.remove(p)
        if os.path.exists(self.file(MANIFEST)):
            os.remove(self.file(MANIFEST))

    def discard_failed_start(self) -> None:
        """After a new run failed before its first checkpoint: remove its files (and the directory if
        this run created it and it is now empty)."""
        if self.checkpointed():
            return
        self.remove_own_files()
        if self.created and os.path.isdir(self.path) and not os.listdir(self.path):
            os.rmdir(self.path)

    # ---------------------------------------------------------------------------------------------
    # writing

    def _write_manifest(self, m: dict) -> None:
        if not self.writable:
            return
        m["files"] = sorted(set(m["files"]))
        m["format"] = _FORMAT  # what this ibjax writes (a resumed older run's files are rewritten in it)
        _atomic_write(self.file(MANIFEST), json.dumps(m, indent=1))

    def update_manifest(self, **fields) -> None:
        m = self.manifest() or {"format": _FORMAT, "files": []}
        m.update(fields)
        self._write_manifest(m)

    def claim(self, *names: str) -> None:
        """Record top-level names as ibjax's before writing them."""
        m = self.manifest() or {"format": _FORMAT, "files": []}
        new = [n.split("/")[0] for n in names]
        if not set(new) <= set(m["files"]):
            m["files"] = list(m["files"]) + new
            self._write_manifest(m)

    def write_json(self, name: str, obj: Any) -> None:
        self.claim(name)
        if self.writable:
            _atomic_write(self.file(name), json.dumps(obj, indent=1, default=float))

    def write_jsonl(self, name: str, records: list) -> None:
        self.claim(name)
        if self.writable:
            _atomic_write(self.file(name), "".join(json.dumps(r) + "\n" for r in records))

    def write_text(self, name: str, text: str) -> None:
        self.claim(name)
        if self.writable:
            _atomic_write(self.file(name), text)

    def save_array(self, name: str, array: np.ndarray) -> None:
        self.claim(name)
        if self.writable:
            _atomic_write(self.file(name), _npy_bytes(np.save, array))

    def save_arrays(self, name: str, **arrays) -> None:
        self.claim(name)
        if self.writable:
            _atomic_write(self.file(name), _npy_bytes(np.savez, **arrays))

    def load_array(self, name: str) -> Optional[np.ndarray]:
        p = self.file(name)
        return np.load(p) if os.path.exists(p) else None

    def read_json(self, name: str) -> Any:
        with open(self.file(name)) as f:
            return json.load(f)

    def history(self) -> RunHistory:
        """The run's records as typed objects, read from its files (:class:`~ibjax.records.RunHistory`;
        a file not written yet reads as empty). :class:`~ibjax.records.SchemaError` for records of a
        version this ibjax cannot read."""
        version = self.schema()

        def read(name: str, empty: Any) -> Any:
            return self.read_json(name) if os.path.exists(self.file(name)) else empty

        p = self.file("metrics.jsonl")
        metrics = []
        if os.path.exists(p):
            with open(p) as f:
                metrics = [json.loads(line) for line in f if line.strip()]
        return RunHistory.from_json({"schema": version, "metrics": metrics, "mi": read("mi.json", {}),
                                     "clustering": read("clustering.json", {})}, self.path)
