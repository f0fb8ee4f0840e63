"""The ``.npz`` cache of loaded splits: one file per request, written atomically, rebuilt when unreadable.

Its directory is ``$IBJAX_CACHE`` or ``~/.cache/ibjax`` unless the caller names one; a request's key
(source, name, path and fingerprint, split, per-class limit) picks its file, so later calls read the
cache without touching the source (nor importing TFDS).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ibjax.data.dataset import Dataset

__all__ = ["default_cache_dir", "cached"]

_CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$IBJAX_CACHE`` if set, else ``~/.cache/ibjax``."""
    return Path(os.environ.get("IBJAX_CACHE") or Path.home() / ".cache" / "ibjax").expanduser()


def cached(cache_dir: Path, key: tuple, build: Callable[[], Dataset]) -> Dataset:
    """Returns the data set stored under ``key`` in ``cache_dir``, building and storing it if absent."""
    path = _cache_path(cache_dir, key)
    if path.exists():
        try:
            return _read_npz(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable / old cache entry: rebuild it below
    dataset = build()
    _write_npz(path, dataset)
    return dataset


def _cache_path(cache_dir: Path, key: tuple) -> Path:
    digest = hashlib.sha1(repr((_CACHE_FORMAT,) + key).encode()).hexdigest()[:16]
    readable = "-".join(str(part) for part in (key[1], key[-2], key[-1] or "all"))
    readable = "".join(c if c.isalnum() or c in "._-" else "_" for c in readable)[:80]
    return cache_dir / f"{readable}-{digest}.npz"


def _write_npz(path: Path, dataset: Dataset) -> None:
    """Writes atomically (temporary file + rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=dataset.images, labels=dataset.labels,
                     class_names=np.asarray(dataset.class_names, dtype=str), name=np.asarray(dataset.name))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_npz(path: Path) -> Dataset:
    with np.load(path, allow_pickle=False) as f:
        return Dataset(images=f["images"], labels=f["labels"],
                       class_names=tuple(str(c) for c in f["class_names"]), name=str(f["name"]))
