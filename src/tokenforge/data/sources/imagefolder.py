"""The `imagefolder:PATH` source: PATH/<class>/<images> (ImageNet layout), or PATH/train + PATH/test|val.

Class folders are searched recursively for files with an image extension (`IMAGE_EXTENSIONS`); hidden files
and folders are skipped, and a class folder without images is an error. With train/ and test/ (or val/) trees
the source keeps that split, the test classes being a subset of the train ones; a lone train/ is the tree
itself. Images are read only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tokenforge.data.sources.base import IMAGE_EXTENSIONS, Source, SourceOptions, read_image, require_path
from tokenforge.errors import TokenforgeError


def open_imagefolder(path: str | None, options: SourceOptions) -> Source:
    """The `imagefolder:PATH` reader."""
    return imagefolder_source(require_path("imagefolder", path))


def _visible(entries: list[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _class_images(class_dir: Path) -> list[Path]:
    """Image files under one class folder (recursively), hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(class_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        keep = [f for f in sorted(files) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        found += [Path(root) / f for f in keep]
    return found


def _scan_tree(root: Path) -> dict[str, list[Path]]:
    """{class name: image paths} of one ImageNet-layout tree; an empty class is an error."""
    classes = {}
    for class_dir in _visible([p for p in root.iterdir() if p.is_dir()]):
        images = _class_images(class_dir)
        if not images:
            raise TokenforgeError(f"{class_dir}: class has no images")
        classes[class_dir.name] = images
    return classes


def _split_dirs(root: Path) -> dict[str, Path] | None:
    """{'train': ..., 'test': ...} when root holds train/ and test/ (or val/) trees, else None."""
    train = root / "train"
    test = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if train.is_dir() and test is not None:
        return {"train": train, "test": test}
    return None


def imagefolder_source(path: str) -> Source:
    """PATH/<class>/<images>, or PATH/train/<class>/... and PATH/test|val/<class>/..."""
    root = Path(path)
    if not root.is_dir():
        raise TokenforgeError(f"{root}: no such directory")
    split_dirs = _split_dirs(root)
    if split_dirs:
        trees = {name: _scan_tree(d) for name, d in split_dirs.items()}
    else:  # a lone train/ is the tree itself (not a class named "train"); shard splits it by seed
        trees = {None: _scan_tree(root / "train" if (root / "train").is_dir() else root)}
    class_names = sorted(next(iter(trees.values())))
    if split_dirs:
        extra = sorted(set(trees["test"]) - set(class_names))
        if extra:
            raise TokenforgeError(f"{split_dirs['test'] / extra[0]}: class not in {split_dirs['train']}")
    label_of = {name: k for k, name in enumerate(class_names)}
    files, labels, splits = [], [], []
    for split, tree in trees.items():
        for name in sorted(tree):
            files += tree[name]
            labels += [label_of[name]] * len(tree[name])
            splits += [split] * len(tree[name])
    return Source(
        spec=f"imagefolder:{path}",
        class_names=class_names,
        mode="RGB",
        labels=np.asarray(labels, dtype=np.int64),
        ids=[f.relative_to(root).as_posix() for f in files],
        splits=splits if split_dirs else None,
        load=lambda i: read_image(files[i]),
    )
