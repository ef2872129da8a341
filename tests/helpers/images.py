"""Image datasets written in the layouts tokenforge reads: image folders and CIFAR pickles."""

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def make_imagefolder(root: Path, classes: dict[str, int], size=(12, 10), seed=0) -> Path:
    """root/<class>/<k>.png with random RGB pixels; returns root."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{k}.png")
    return root


def fake_cifar10(root: Path, per_batch: int = 4, seed: int = 0, protocol: int | None = None) -> Path:
    """A tiny cifar-10-batches-py folder: bytes keys, as Python 2 pickles load with encoding='bytes'.

    `protocol` 2 writes it as Python 3 re-pickling the original files at protocol 2 would.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f, protocol)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{k}.png".encode() for k in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol)
    return folder


def fake_cifar100(root: Path, n_train: int = 6, n_test: int = 3, seed: int = 1) -> Path:
    """A tiny cifar-100-python folder (fine and coarse labels, str keys as a Python 3 pickle has)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    with open(folder / "meta", "wb") as f:
        meta = {"fine_label_names": [f"c{k}" for k in range(100)], "coarse_label_names": [f"s{k}" for k in range(20)]}
        pickle.dump(meta, f)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {
            "fine_labels": rng.integers(0, 100, size=n).tolist(),
            "coarse_labels": rng.integers(0, 20, size=n).tolist(),
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder

