"""Image sources for the `shard` stage: where the pixels come from.

A source spec names a reader of the registry `tokenforge.data.SOURCES` (one module here per reader):

    digits               scikit-learn's bundled 8x8 handwritten digits (digits.py)
    shapes               seeded procedural RGB shapes, any count, class count and size (shapes.py)
    imagefolder:PATH     PATH/<class>/<images> (ImageNet layout), or PATH/train + PATH/test|val (imagefolder.py)
    cifar:PATH           CIFAR-10 / CIFAR-100 python pickle batches (cifar.py)
    idx:PATH             MNIST-format IDX files: MNIST, Fashion-MNIST, KMNIST, EMNIST (idx.py)

and the text-bearing ones, whose images each carry a text record (`Source.texts`: questions and answers,
captions, object names; format: tokenforge/data/multimodal.py):

    scenes               seeded procedural CLEVR-like scenes with questions and captions (scenes.py)
    vqa2:PATH            VQA v2 questions and annotations with their COCO images (vqa2.py)
    clevr:PATH           CLEVR v1.0 questions and images (clevr.py)
    coco-captions:PATH   COCO captions (and object categories) with their images (coco_captions.py)

A NAME an installed package announces in the entry-point group "tokenforge.sources" works the same way, and so
does a researcher's own reader by import path: `mylab.data:open_scans:/data/scans` (or `mylab.data:open_scans`
for one that takes no PATH). Every reader is `reader(path: str | None, options: SourceOptions) -> Source`.
Specs joined with '+' (`vqa2:/a+clevr:/b`) are one source whose label k is the k-th spec's dataset (join.py).

`open_source(spec, ...)` returns a `Source` (base.py): labels, class names and the original split are known up
front, while images are loaded one at a time. `first_per_class(source, n)` keeps the first n images of each
class per split.
"""

from __future__ import annotations

from tokenforge.data import SOURCES, source_kinds
from tokenforge.data.sources.base import (
    IMAGE_EXTENSIONS,
    SUPERSAMPLE,
    Sample,
    Source,
    SourceOptions,
    first_per_class,
    read_image,
    refuse_path,
    require_path,
)
from tokenforge.data.sources.join import dataset_name, join_sources
from tokenforge.errors import TokenforgeError
from tokenforge.plugins import is_import_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "SUPERSAMPLE",
    "Sample",
    "Source",
    "SourceOptions",
    "dataset_name",
    "first_per_class",
    "join_sources",
    "open_source",
    "read_image",
    "refuse_path",
    "require_path",
]


def open_source(
    spec: str,
    *,
    seed: int = 0,
    shapes_count: int = 2000,
    shapes_classes: int = 10,
    shapes_size: int = 32,
    scenes_count: int = 1000,
    scenes_size: int = 32,
) -> Source:
    """Parse a source spec and open it; a bad spec or path is a TokenforgeError.

    A spec with '+' opens each part (any spec) with the same options and joins them (`join_sources`).
    """
    options = SourceOptions(seed, shapes_count, shapes_classes, shapes_size, scenes_count, scenes_size)
    if "+" in spec:
        parts = spec.split("+")
        if not all(parts):
            raise TokenforgeError(f"source {spec!r}: empty part in a '+' join")
        return join_sources([open_one(part, options) for part in parts])
    return open_one(spec, options)


def open_one(spec: str, options: SourceOptions) -> Source:
    """One spec (no '+'): `NAME`, `NAME:PATH`, `package.module:reader` or `package.module:reader:PATH`."""
    reader_name, path = parse_spec(spec)
    reader = SOURCES.load(reader_name)
    source = reader(path, options)
    if not isinstance(source, Source):
        raise TokenforgeError(
            f"{SOURCES.key}: {reader_name!r} returned a {type(source).__name__}, not a tokenforge Source"
        )
    return source


def parse_spec(spec: str) -> tuple[str, str | None]:
    """(what to look up in SOURCES, PATH or None) of one spec.

    The part before the first ':' is a source name when SOURCES has it (built-in or an installed plugin's);
    otherwise the first two ':' parts must be an import path (`package.module:reader`), the rest the PATH.
    A PATH may itself hold ':' (split off only at the first one, or the second for an import path).
    """
    name, sep, rest = spec.partition(":")
    if name in SOURCES.names():
        return name, rest if sep else None
    attribute, sep, path = rest.partition(":")
    if is_import_path(f"{name}:{attribute}"):
        return f"{name}:{attribute}", path if sep else None
    raise TokenforgeError(f"source {spec!r}: unknown source; expected {source_kinds()}")
