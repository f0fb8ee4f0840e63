"""The :class:`Dataset` type every source returns, the error for data that is not here, and the array
helpers the sources share (per-class cuts, channel axes, stacking, split checks)."""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

__all__ = ["Dataset", "DataUnavailableError", "SVHN_TRAIN_PER_CLASS", "limit_per_class", "svhn_reference_cut"]

SVHN_TRAIN_PER_CLASS = 4000


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


def limit_per_class(dataset: Dataset, n: int) -> Dataset:
    """Keeps the first ``n`` samples of every class (in the order of ``dataset``)."""
    keep = first_n_per_class(dataset.labels, n)
    return dataclasses.replace(dataset, images=dataset.images[keep], labels=dataset.labels[keep])


def svhn_reference_cut(dataset: Dataset) -> Dataset:
    """SPEC's SVHN training set: the first 4,000 images of every class."""
    return limit_per_class(dataset, SVHN_TRAIN_PER_CLASS)


# ----------------------------------------------------------------------------------------------
# Helpers of every source
# ----------------------------------------------------------------------------------------------


def first_n_per_class(labels: np.ndarray, n: int | None) -> np.ndarray:
    """Indices (ascending) of the first ``n`` occurrences of every label; all indices if n is None."""
    if n is None:
        return np.arange(labels.shape[0])
    keep = [np.flatnonzero(labels == c)[:n] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def with_channel_axis(image: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 1); (H, W, C) unchanged."""
    return image[..., None] if image.ndim == 2 else image


def stack_images(images: list[np.ndarray], sources: list[str]) -> np.ndarray:
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


def check_split(split: str, available: Iterable[str], name: str) -> None:
    """ValueError listing the available splits when ``split`` (or a part of ``a+b``, slicing
    syntax allowed) is not one of them."""
    available = list(available)
    for part in split.split("+"):
        base = part.split("[")[0].strip()
        if base not in available:
            raise ValueError(f"unknown split {split!r} for dataset {name!r}; available splits: {available}")
