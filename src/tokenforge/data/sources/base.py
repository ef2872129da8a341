"""What every image source shares: the `Source` a reader returns, its `Sample`s, the options a reader gets
(`SourceOptions`), the PATH checks of the readers' one interface, `read_image` and `first_per_class`.

A reader is `reader(path: str | None, options: SourceOptions) -> Source`: `path` is what follows `NAME:` in the
source spec (None when the spec has no ':'). Labels, class names and the original split are known when the
source is opened, while images are loaded one at a time (`source.image(i)`), so a large image folder is never
held in memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from tokenforge.errors import TokenforgeError

# The same extensions torchvision's ImageFolder accepts; other files in a class folder are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SUPERSAMPLE = 4  # procedural images are drawn at 4x and box-downsampled: anti-aliased edges at 32 px


@dataclass(frozen=True)
class SourceOptions:
    """The shard stage's source flags, handed to every reader (each reads the ones it needs)."""

    seed: int = 0
    shapes_count: int = 2000
    shapes_classes: int = 10
    shapes_size: int = 32
    scenes_count: int = 1000
    scenes_size: int = 32


def require_path(name: str, path: str | None) -> str:
    """`path` for a `name:PATH` source; none (or an empty one) is a one-line error."""
    if not path:
        raise TokenforgeError(f"source {name!r}: missing PATH after '{name}:'")
    return path


def refuse_path(name: str, path: str | None) -> None:
    """A source that takes no PATH given one: a one-line error rather than a silently ignored path."""
    if path is not None:
        raise TokenforgeError(f"source {name!r}: takes no PATH, got '{name}:{path}'")


@dataclass(frozen=True)
class Sample:
    """One image with its label, as a source yields it."""

    image: Image.Image
    label: int
    class_names: list[str]
    split: str | None  # the source's own split ('train'/'test'), None if it has none
    source_id: str  # where the image came from: a relative path, "data_batch_1/17", "digits/5"


@dataclass
class Source:
    """A labelled image collection whose images are decoded on demand."""

    spec: str
    class_names: list[str]
    mode: str  # natural PIL mode: "L" or "RGB"
    labels: np.ndarray  # int64 (N,)
    ids: list[str]
    splits: list[str] | None  # per-sample original split, or None when the source has no split
    load: Callable[[int], Image.Image] = field(repr=False)
    # per-sample text record (format: tokenforge/data/multimodal.py), or None for an image-only source
    texts: list[dict] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return self.load(i)

    def sample(self, i: int) -> Sample:
        split = self.splits[i] if self.splits is not None else None
        return Sample(self.image(i), int(self.labels[i]), self.class_names, split, self.ids[i])

    def __iter__(self) -> Iterator[Sample]:
        return (self.sample(i) for i in range(len(self)))

    def subset(self, indices: list[int] | np.ndarray) -> Source:
        """The samples at `indices`, in that order; ids, splits and texts travel with them, images stay lazy."""
        keep = np.asarray(indices, dtype=np.int64)
        return Source(
            spec=self.spec,
            class_names=self.class_names,
            mode=self.mode,
            labels=self.labels[keep],
            ids=[self.ids[i] for i in keep],
            splits=None if self.splits is None else [self.splits[i] for i in keep],
            load=lambda j: self.load(int(keep[j])),
            texts=None if self.texts is None else [self.texts[i] for i in keep],
        )


def first_per_class(source: Source, n: int | None) -> Source:
    """The first n samples of each class in source order, counted per original split (train and test
    separately) when the source has one, over all samples otherwise; None keeps every sample.

    No randomness: the same source and n always give the same samples.
    """
    if n is None:
        return source
    if n < 1:
        raise TokenforgeError(f"--max-per-class {n}: must be >= 1")
    splits = source.splits if source.splits is not None else [None] * len(source)
    seen: Counter = Counter()
    keep = []
    for i, (label, split) in enumerate(zip(source.labels.tolist(), splits)):
        if seen[split, label] < n:
            seen[split, label] += 1
            keep.append(i)
    return source.subset(keep)


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image file; anything unreadable is a one-line TokenforgeError."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split())
        raise TokenforgeError(f"{path}: cannot read image ({reason})") from None
