"""The `idx:PATH` source: MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), gzipped or plain.

PATH holds *train-images-idx3-ubyte[.gz] + *train-labels-idx1-ubyte[.gz] and the same with t10k- or test- for
the test split; class names come from PATH/classes.txt if present (one per line), else "0", "1", ...
"""

from __future__ import annotations

import bisect
import gzip
import math
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tokenforge.data.sources.base import Source, SourceOptions, require_path
from tokenforge.errors import TokenforgeError


def open_idx(path: str | None, options: SourceOptions) -> Source:
    """The `idx:PATH` reader."""
    return idx_source(require_path("idx", path))


IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one MNIST-style datasets use
IDX_TEST_PREFIXES = ("t10k", "test")  # MNIST / Fashion-MNIST say t10k-, EMNIST and KMNIST test-


def _idx_file(root: Path, split: str, kind: str) -> tuple[Path, str]:
    """(path, prefix) of the one file named <prefix>-<kind>[.gz] for a split, prefix ending in train/t10k/test.

    kind is "images-idx3-ubyte" or "labels-idx1-ubyte"; the prefix ("train", "t10k",
    "emnist-balanced-train") names the sample ids. No match or more than one is an error.
    """
    words = ("train",) if split == "train" else IDX_TEST_PREFIXES
    suffixes = tuple(f"{w}-{kind}{gz}" for w in words for gz in ("", ".gz"))
    found = sorted(
        p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(suffixes)
    )
    patterns = " or ".join(f"*{w}-{kind}[.gz]" for w in words)
    if not found:
        raise TokenforgeError(f"{root}: no {split} file matching {patterns}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise TokenforgeError(f"{root}: {len(found)} files match {patterns}: {names} (keep one dataset per folder)")
    name = found[0].name.removesuffix(".gz")
    return found[0], name[: -len(f"-{kind}")]


def _idx_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz; a corrupt gzip is a one-line error."""
    gz = path.suffix == ".gz"
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        raise TokenforgeError(f"{path}: {'corrupt gzip file' if gz else 'cannot read'} ({reason})") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with `ndim` dimensions as a read-only uint8 array.

    Layout: two zero bytes, type code 0x08, ndim; ndim big-endian uint32 sizes; the data, row-major.
    """
    data = _idx_bytes(path)
    expected = f"0x000008{ndim:02x} (unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
    if len(data) < 4:
        raise TokenforgeError(f"{path}: truncated IDX header ({len(data)} bytes)")
    if data[:2] != b"\0\0" or data[2] != IDX_UBYTE or data[3] != ndim:
        hint = "; gzip data in a file not named .gz" if data[:2] == b"\x1f\x8b" else ""
        raise TokenforgeError(f"{path}: bad IDX magic number 0x{data[:4].hex()}, expected {expected}{hint}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise TokenforgeError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size, found = math.prod(shape), len(data) - header
    if found != size:
        what = "truncated" if found < size else "trailing bytes"
        dims = "x".join(map(str, shape))
        raise TokenforgeError(f"{path}: {what}: the header says {dims} = {size} bytes of data, found {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_class_names(root: Path, labels: np.ndarray) -> list[str]:
    """Names from root/classes.txt (one per line, line k names label k), else "0".."max label"."""
    count = int(labels.max()) + 1 if len(labels) else 0
    path = root / "classes.txt"
    if not path.is_file():
        return [str(c) for c in range(count)]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenforgeError(f"{path}: cannot read class names ({' '.join(str(exc).split())})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if "" in names:
        raise TokenforgeError(f"{path}: line {names.index('') + 1} is empty; expected one class name per line")
    if len(set(names)) != len(names):
        raise TokenforgeError(f"{path}: class name {next(n for n in names if names.count(n) > 1)!r} appears twice")
    if len(names) < count:
        raise TokenforgeError(f"{path}: {len(names)} class names, but the labels go up to {count - 1}")
    return names


def idx_source(path: str) -> Source:
    """MNIST-format IDX files: train and t10k/test images (N, H, W) and labels (N,), gzipped or plain.

    Fits MNIST, Fashion-MNIST, KMNIST and one EMNIST split (EMNIST stores its images transposed; they
    are read as they are). The arrays stay in memory (Fashion-MNIST: 55 MB); ids are "<prefix>/<k>".
    """
    root = Path(path)
    if not root.is_dir():
        raise TokenforgeError(f"{root}: no such directory")
    arrays, labels, ids, splits = [], [], [], []
    for split in ("train", "test"):
        images_path, prefix = _idx_file(root, split, "images-idx3-ubyte")
        labels_path, _ = _idx_file(root, split, "labels-idx1-ubyte")
        images, y = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(images) != len(y):
            raise TokenforgeError(f"{images_path}: {len(images)} images, but {labels_path} has {len(y)} labels")
        arrays.append(images)
        labels.append(y.astype(np.int64))
        ids += [f"{prefix}/{k}" for k in range(len(y))]
        splits += [split] * len(y)
    starts = [0, len(arrays[0])]

    def load(i: int) -> Image.Image:
        part = bisect.bisect_right(starts, i) - 1
        return Image.fromarray(arrays[part][i - starts[part]])

    all_labels = np.concatenate(labels)
    return Source(
        spec=f"idx:{path}",
        class_names=_idx_class_names(root, all_labels),
        mode="L",
        labels=all_labels,
        ids=ids,
        splits=splits,
        load=load,
    )
