"""TFDS data sets by name (``cifar10``, ``svhn_cropped``, ``cifar100``, ``mnist``, ``fashion_mnist``, any
TFDS image-classification data set), read through ``tfds.data_source``: the array-record random-access
path, which needs no TensorFlow.

``tensorflow_datasets`` is imported only when such a data set is actually read, so machines without
TFDS can still use the other sources and the cache. A data set that is not prepared raises
:class:`~ibjax.data.DataUnavailableError` at once unless ``download=True``; the messages here say how
to get the data.
"""

from __future__ import annotations

import os
import socket

import numpy as np

from ibjax.data.dataset import DataUnavailableError, Dataset, check_split, stack_images, with_channel_axis
from ibjax.data.embedded import EMBEDDED_DATASETS

__all__ = ["load_tfds", "unknown_name_message", "not_prepared_message"]

_NETWORK_PROBE = ("storage.googleapis.com", 443)


def load_tfds(name: str, split: str, data_dir, download: bool, per_class_limit: int | None) -> Dataset:
    """One split of the TFDS data set ``name`` (prepared in ``data_dir``, or TFDS's default)."""
    tfds = _import_tfds(name)
    builder = _tfds_builder(tfds, name, data_dir)
    if not builder.is_prepared():  # local file check only: no network before this point
        if not download:
            raise DataUnavailableError(not_prepared_message(name, builder.data_dir, download_failed=None))
        builder = _tfds_download(tfds, name, data_dir)
    check_split(split, builder.info.splits.keys(), name)
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
        raise ValueError(unknown_name_message(name, "not embedded, not an existing path, not a TFDS name")) from e


def _tfds_download(tfds, name: str, data_dir):
    """Downloads and prepares in array-record format; any failure -> DataUnavailableError at once."""
    where = data_dir if data_dir is not None else "the TFDS default data dir"
    if not _network_available():
        raise DataUnavailableError(not_prepared_message(name, where, download_failed="no network connection"))
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir),
                               file_format="array_record")
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - any download/prepare failure means "not available"
        raise DataUnavailableError(not_prepared_message(name, where, download_failed=repr(e))) from e
    return builder


def _network_available(timeout: float = 3.0) -> bool:
    """Cheap connectivity probe, so an offline machine fails in seconds instead of retrying for minutes."""
    try:
        socket.create_connection(_NETWORK_PROBE, timeout=timeout).close()
        return True
    except OSError:
        return False


def unknown_name_message(name: str, why: str) -> str:
    """What ``name`` may be instead: an embedded data set, a TFDS name or an image-folder path."""
    return (f"unknown dataset {name!r} ({why}). Options: an embedded data set {list(EMBEDDED_DATASETS)}; "
            "a TFDS image-classification name such as 'cifar10', 'svhn_cropped', 'cifar100', 'mnist', "
            "'fashion_mnist'; or the path of an image-folder directory / .tar.gz archive laid out "
            "split/class/image (or pass it as data_dir=...).")


def not_prepared_message(name: str, where, download_failed: str | None) -> str:
    """Why the TFDS data set ``name`` is not in ``where``, and the three ways to get data instead."""
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
        images.append(with_channel_axis(np.asarray(record[image_key], dtype=np.uint8)))
        labels.append(label)
        sources.append(f"record {index}")
        if per_class_limit is not None and counts.min() >= per_class_limit:
            break
    return stack_images(images, sources), np.asarray(labels, dtype=np.int32)
