"""The `cifar:PATH` source: CIFAR-10 / CIFAR-100 python pickle batches, read with a restricted unpickler.

PATH is the folder of the batches (or holds cifar-10-batches-py/ or cifar-100-python/). CIFAR-10 has
data_batch_1..5 + test_batch + batches.meta, CIFAR-100 train + test + meta (its fine labels are used). The
pickles may name numpy's array rebuilders and nothing else; every batch is checked to hold plain data of the
expected shapes before its pixels are used.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tokenforge.data.sources.base import Source, SourceOptions, require_path
from tokenforge.errors import TokenforgeError


def open_cifar(path: str | None, options: SourceOptions) -> Source:
    """The `cifar:PATH` reader."""
    return cifar_source(require_path("cifar", path))


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle may name: numpy's array and dtype rebuilders, and `_codecs.encode`.

    Pickles written by numpy 1.x name numpy.core, numpy 2.x names numpy._core; both map to the
    installed function without importing the module named in the file (numpy.core warns on 2.x).
    _frombuffer is how pickle protocol 5 (Python 3.14's default) stores an array. Python 3 writes bytes
    at protocol 2 or lower as `_codecs.encode(text, "latin1")` (a CIFAR folder re-pickled by Python 3), which
    only turns a string into bytes.
    """
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only; any other global is refused, never imported."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")  # CIFAR was pickled by Python 2: str -> bytes
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise TokenforgeError(
                f"{self.path}: refusing to unpickle global '{module}.{name}' (only numpy arrays are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise TokenforgeError(f"{self.path}: refusing to unpickle a persistent id")


def _check_plain(obj: Any, path: Path, depth: int = 0) -> None:
    """Accept only dicts, lists, non-object arrays, bytes, str and int (bool is an int)."""
    if depth > 8:
        raise TokenforgeError(f"{path}: nested too deeply for a CIFAR batch")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, path, depth + 1)
            _check_plain(v, path, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_plain(v, path, depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TokenforgeError(f"{path}: refusing an array of Python objects")
    elif not isinstance(obj, (bytes, str, int)):
        raise TokenforgeError(f"{path}: unexpected {type(obj).__name__} in a CIFAR batch")


def load_pickle(path: Path) -> dict:
    """Read one CIFAR pickle file safely into a dict with str keys."""
    if not path.is_file():
        raise TokenforgeError(f"{path}: CIFAR file not found")
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, path).load()
    except TokenforgeError:
        raise
    except Exception as exc:  # pickle raises many types on garbage input; all mean "not a batch"
        raise TokenforgeError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})") from None
    _check_plain(obj, path)
    if not isinstance(obj, dict):
        raise TokenforgeError(f"{path}: expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _field(batch: dict, key: str, path: Path) -> Any:
    if key not in batch:
        raise TokenforgeError(f"{path}: missing key '{key}'")
    return batch[key]


def _names(values: Any, path: Path) -> list[str]:
    if not isinstance(values, list):
        raise TokenforgeError(f"{path}: class names are not a list")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _cifar_layout(root: Path) -> tuple[Path, list[tuple[str, str]], str, str, str]:
    """(folder, [(file, split)], meta file, label key, names key) of a CIFAR-10 or -100 folder."""
    for folder in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if (folder / "batches.meta").is_file():
            files = [(f"data_batch_{k}", "train") for k in range(1, 6)] + [("test_batch", "test")]
            return folder, files, "batches.meta", "labels", "label_names"
        if (folder / "meta").is_file() and (folder / "train").is_file():
            return folder, [("train", "train"), ("test", "test")], "meta", "fine_labels", "fine_label_names"
    raise TokenforgeError(
        f"{root}: not a CIFAR folder (expected batches.meta + data_batch_1..5 + test_batch, or meta + train + test)"
    )


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3), labels int64 (N,)) of one batch file, validated."""
    batch = load_pickle(path)
    data, labels = _field(batch, "data", path), _field(batch, label_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise TokenforgeError(f"{path}: 'data' must be a uint8 array of rows of 3072 values")
    labels = np.asarray(labels, dtype=np.int64) if isinstance(labels, (list, np.ndarray)) else None
    if labels is None or labels.shape != (len(data),):
        raise TokenforgeError(f"{path}: '{label_key}' must hold one label per data row")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise TokenforgeError(f"{path}: label out of range 0..{num_classes - 1}")
    # rows are channel-first 3x32x32
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar_source(path: str) -> Source:
    """CIFAR-10 (data_batch_1..5, test_batch) or CIFAR-100 (train, test; fine labels)."""
    root = Path(path)
    if not root.is_dir():
        raise TokenforgeError(f"{root}: no such directory")
    folder, files, meta_name, label_key, names_key = _cifar_layout(root)
    meta_path = folder / meta_name
    class_names = _names(_field(load_pickle(meta_path), names_key, meta_path), meta_path)
    images, labels, ids, splits = [], [], [], []
    for name, split in files:
        x, y = _read_batch(folder / name, label_key, len(class_names))
        images.append(x)
        labels.append(y)
        ids += [f"{name}/{k}" for k in range(len(y))]
        splits += [split] * len(y)
    pixels = np.ascontiguousarray(np.concatenate(images))
    return Source(
        spec=f"cifar:{path}",
        class_names=class_names,
        mode="RGB",
        labels=np.concatenate(labels),
        ids=ids,
        splits=splits,
        load=lambda i: Image.fromarray(pixels[i]),
    )
