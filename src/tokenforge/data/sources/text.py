"""What the text-bearing readers of dataset files share (vqa2, clevr, coco-captions): a source of image files on
disk with one text record each (format: tokenforge/data/multimodal.py), and checked access to the datasets' JSON
annotation files, whose every problem is a one-line TokenforgeError naming the file.

These readers keep the datasets' own split (train -> "train", val -> "test"; a split whose files are absent is
skipped, none at all is an error). Every image gets label 0 and class_names [dataset]; `join_sources`
(join.py) gives each joined dataset its own label. Images are read lazily, as RGB; every file is checked to
exist when the source is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tokenforge.data.sources.base import Source, read_image
from tokenforge.errors import TokenforgeError


def text_source(spec: str, dataset: str, records: list[dict], files: list[Path], ids: list[str], splits) -> Source:
    """A source of image files on disk, one text record each, all with label 0 (class `dataset`)."""

    def load(i: int) -> Image.Image:
        img = read_image(files[i])
        return img if img.mode == "RGB" else img.convert("RGB")

    return Source(
        spec=spec,
        class_names=[dataset],
        mode="RGB",
        labels=np.zeros(len(records), dtype=np.int64),
        ids=ids,
        splits=splits,
        load=load,
        texts=records,
    )


class TextImages:
    """The images of a text dataset, gathered split by split in the reader's order: each one's file (checked to
    exist), text record, id (its path under the root) and split; then one `text_source`."""

    def __init__(self, root: Path):
        self.root = root
        self.records: list[dict] = []
        self.files: list[Path] = []
        self.ids: list[str] = []
        self.splits: list[str] = []

    def add(self, rel: str, listed_in: Path, record: dict, split: str) -> None:
        self.files.append(image_file(self.root / rel, listed_in))
        self.records.append(record)
        self.ids.append(rel)
        self.splits.append(split)

    def source(self, spec: str, dataset: str) -> Source:
        return text_source(spec, dataset, self.records, self.files, self.ids, self.splits)


def dataset_root(path: str) -> Path:
    """PATH of a `kind:PATH` spec as a directory that exists."""
    root = Path(path)
    if not root.is_dir():
        raise TokenforgeError(f"{root}: no such directory")
    return root


def json_items(container: Any, key: str, path: Path, where: str) -> list[dict]:
    """container[key] as a list of JSON objects, else an error naming the file."""
    items = container.get(key) if isinstance(container, dict) else None
    if not isinstance(items, list):
        raise TokenforgeError(f"{path}: {where} has no {key!r} list")
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise TokenforgeError(f"{path}: {key}[{k}] is not a JSON object")
    return items


def json_int(item: dict, key: str, path: Path, where: str) -> int:
    """item[key] as an int (a JSON bool is not one), else an error naming the file and the item."""
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenforgeError(f"{path}: {where} has no integer {key!r}")
    return value


def json_str(item: dict, key: str, path: Path, where: str) -> str:
    """item[key] as a str, else an error naming the file and the item."""
    value = item.get(key)
    if not isinstance(value, str):
        raise TokenforgeError(f"{path}: {where} has no string {key!r}")
    return value


def image_file(file: Path, listed_in: Path) -> Path:
    """`file` if it exists: checked when the source is opened, not when the image is first read."""
    if not file.is_file():
        raise TokenforgeError(f"{file}: image not found (listed in {listed_in})")
    return file
