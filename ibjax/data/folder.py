"""Local image folders laid out ``split/class/image``, as a directory or as a ``.tar.gz``/``.tgz``/``.tar``
archive read member by member without extracting it.

The split folders may sit under one top-level folder (e.g. ``cifar10-jpeg/{train,test}/{airplane,...}/
0000.jpg``). Class index = position of the class folder name in the alphabetically sorted list of
class folders of all splits (for CIFAR-10 the canonical order airplane=0 ... truck=9). Images are
ordered by class, then by file name. A request is for a folder when ``name`` is an existing path, or
when ``data_dir`` points at such an archive or folder (``name`` is then only a label).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from ibjax.data.dataset import Dataset, check_split, stack_images, with_channel_axis

__all__ = ["ARCHIVE_SUFFIXES", "IMAGE_SUFFIXES", "image_folder_source", "load_image_folder"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def looks_like_path(name: str) -> bool:
    """True for names meant as paths ('./x', '/x', '~/x', 'x.tar.gz'); TFDS names like 'a/b' are not."""
    return name.startswith((".", "~", os.sep)) or name.lower().endswith(ARCHIVE_SUFFIXES)


def _strip_archive_suffix(filename: str) -> str:
    for suffix in ARCHIVE_SUFFIXES:
        if filename.lower().endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def image_folder_source(name: str, data_dir) -> tuple[Path, str] | None:
    """(archive file or folder root, data set label) if this request is for a local image folder."""
    path = Path(name).expanduser()
    if path.exists():
        label = _strip_archive_suffix(path.resolve().name)
        if is_archive(path):
            return path, label
        root = _folder_root(path) if path.is_dir() else None
        if root is not None:
            return root, label
        if looks_like_path(name):
            raise ValueError(f"{name!r} is neither a {'/'.join(ARCHIVE_SUFFIXES)} archive nor a directory "
                             "laid out split/class/image")
        # else: a bare name such as 'cifar10' that happens to exist in the working directory: not ours
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if is_archive(path):
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


def fingerprint(path: Path) -> str:
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


def load_image_folder(path: Path, split: str, label: str, per_class_limit: int | None) -> Dataset:
    """Collects (class, file name, raw bytes) of one split, sorts them by class then file name,
    keeps the first per_class_limit of every class, and only then decodes."""
    if path.is_file():
        classes, splits, files = _scan_archive(path, split)
    else:
        classes, splits, files = _scan_directory(path, split)
    check_split(split, sorted(splits), label)
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
    return Dataset(images=stack_images(images, [f[2] for f in files]), labels=labels,
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
    return with_channel_axis(array)
