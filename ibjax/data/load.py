""":func:`load_dataset`, the one entry point: which source a request is for (embedded, image folder,
TFDS), with every cheap check of its arguments first, each source's result served from the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ibjax.data import embedded, folder, tfds
from ibjax.data.cache import cached, default_cache_dir
from ibjax.data.dataset import DataUnavailableError, Dataset

__all__ = ["load_dataset"]


def load_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    per_class_limit: int | None = None,
) -> Dataset:
    """Loads one split as a :class:`Dataset` (uint8 (N, H, W, C) images, int32 (N,) labels).

    Args:
      name: ``"mnist5k"`` (embedded), a TFDS name (``"cifar10"``, ``"svhn_cropped"``, ...), or the
        path of an image-folder directory / ``.tar.gz``/``.tgz``/``.tar`` archive.
      split: ``"train"``, ``"test"``, ... (TFDS also accepts its slicing syntax, e.g. ``"train[:10%]"``).
      data_dir: an image-folder directory or archive (then ``name`` is only a label), or a TFDS
        data directory (default: TFDS's own default).
      cache_dir: where the ``.npz`` cache lives (default ``$IBJAX_CACHE`` or ``~/.cache/ibjax``).
      download: TFDS only: download and prepare the data set if it is missing (needs internet).
      per_class_limit: keep only the first n samples of every class, in data set order.

    Raises:
      DataUnavailableError: the data is not here and cannot be fetched (message says how to get it).
      ValueError: unknown name, unknown split, bad per_class_limit, or images of different sizes.
    """
    if per_class_limit is not None and (isinstance(per_class_limit, bool) or not isinstance(
            per_class_limit, (int, np.integer)) or per_class_limit < 1):
        raise ValueError(f"per_class_limit must be a positive integer or None, got {per_class_limit!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    if name in embedded.EMBEDDED_DATASETS:
        return cached(cache, ("embedded", name, split, per_class_limit),
                      lambda: embedded.load_mnist5k(split, per_class_limit))

    if data_dir is not None:
        _check_data_dir(Path(data_dir).expanduser(), name, download)
    source = folder.image_folder_source(name, data_dir)
    if source is not None:
        path, label = source
        key = ("folder", label, str(path.resolve()), folder.fingerprint(path), split, per_class_limit)
        return cached(cache, key, lambda: folder.load_image_folder(path, split, label, per_class_limit))

    if folder.looks_like_path(name):
        raise ValueError(tfds.unknown_name_message(name, f"there is no file or directory {name!r}"))
    dir_key = str(Path(data_dir).expanduser().resolve()) if data_dir is not None else "<tfds default>"
    key = ("tfds", name, dir_key, split, per_class_limit)
    return cached(cache, key, lambda: tfds.load_tfds(name, split, data_dir, download, per_class_limit))


def _check_data_dir(path: Path, name: str, download: bool) -> None:
    """Fail at once, naming the path, for a data_dir that cannot hold the data (before TFDS is imported)."""
    if not path.exists() and not download:
        raise ValueError(f"data_dir {str(path)!r} does not exist: give an image folder laid out split/class/image, "
                         "a .tar.gz archive of one, or a TFDS data directory")
    if path.is_file() and not folder.is_archive(path):
        raise ValueError(f"data_dir {str(path)!r} is a file but not a {'/'.join(folder.ARCHIVE_SUFFIXES)} archive")
    if path.is_dir() and not any(path.iterdir()) and not download:
        raise DataUnavailableError(f"data_dir {str(path)!r} is an empty directory. "
                                   + tfds.not_prepared_message(name, path, download_failed=None))
