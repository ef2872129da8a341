"""Image sources for the `shard` stage: where the pixels come from.

A source spec names one of these readers:

    digits            scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes)
    shapes            seeded procedural RGB shapes, any count, class count and size
    imagefolder:PATH  PATH/<class>/<images> (ImageNet layout), or PATH/train + PATH/test|val
    cifar:PATH        CIFAR-10 / CIFAR-100 python pickle batches, read with a restricted unpickler
    idx:PATH          MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), gzipped or plain:
                      *train-images-idx3-ubyte[.gz] + *train-labels-idx1-ubyte[.gz] and the same with
                      t10k- or test- for the test split; class names from PATH/classes.txt if present

or one of the text-bearing sources of tokenforge/data/multimodal.py, whose images each carry a text record
(`Source.texts`: questions and answers, captions, object names):

    scenes               seeded procedural CLEVR-like scenes with questions and captions
    vqa2:PATH            VQA v2 questions and annotations with their COCO images
    clevr:PATH           CLEVR v1.0 questions and images
    coco-captions:PATH   COCO captions (and object categories) with their images

and specs joined with '+' (`vqa2:/a+clevr:/b`) are one source whose label k is the k-th spec's dataset.

`open_source(spec, ...)` returns a `Source`: labels, class names and the original split are known
up front, while images are loaded one at a time (`source.image(i)`), so a large image folder is
never held in memory. `first_per_class(source, n)` keeps the first n images of each class per split.
"""

from __future__ import annotations

import bisect
import codecs
import gzip
import math
import os
import pickle
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tokenforge.errors import TokenforgeError

# The text-bearing sources (scenes, vqa2:, clevr:, coco-captions:) are tokenforge/data/multimodal.py's; any specs may
# also be joined with '+'.
SOURCE_KINDS = "digits, shapes, imagefolder:PATH, cifar:PATH, idx:PATH, scenes, vqa2:PATH, clevr:PATH or coco-captions:PATH"

# The same extensions torchvision's ImageFolder accepts; other files in a class folder are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


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
    texts: list[dict] | None = field(default=None, repr=False)  # per-sample text record (multimodal.py), or None

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
    from tokenforge.data import multimodal  # imports this module: not at the top

    if "+" in spec:
        parts = spec.split("+")
        if not all(parts):
            raise TokenforgeError(f"source {spec!r}: empty part in a '+' join")
        options = dict(seed=seed, shapes_count=shapes_count, shapes_classes=shapes_classes, shapes_size=shapes_size)
        options.update(scenes_count=scenes_count, scenes_size=scenes_size)
        return multimodal.join_sources([open_source(part, **options) for part in parts])
    kind, sep, path = spec.partition(":")
    if spec == "digits":
        return digits_source()
    if spec == "shapes":
        return shapes_source(shapes_count, shapes_classes, shapes_size, seed)
    if spec == "scenes":
        return multimodal.scenes_source(scenes_count, scenes_size, seed)
    text_readers = {
        "vqa2": multimodal.vqa2_source,
        "clevr": multimodal.clevr_source,
        "coco-captions": multimodal.coco_captions_source,
    }
    if spec in text_readers:
        raise TokenforgeError(f"source {spec!r}: missing PATH after '{spec}:'")
    readers = {"imagefolder": imagefolder_source, "cifar": cifar_source, "idx": idx_source, **text_readers}
    if sep and kind in readers:
        if not path:
            raise TokenforgeError(f"source {spec!r}: missing PATH after '{kind}:'")
        return readers[kind](path)
    raise TokenforgeError(f"source {spec!r}: unknown source; expected {SOURCE_KINDS}")


# --- digits -----------------------------------------------------------------------------------


def digits_source() -> Source:
    """scikit-learn's bundled digits: values 0..16 scaled to 0..255 (rounded), grayscale 8x8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    return Source(
        spec="digits",
        class_names=[str(c) for c in range(10)],
        mode="L",
        labels=labels,
        ids=[f"digits/{i}" for i in range(len(labels))],
        splits=None,
        load=lambda i: Image.fromarray(images[i]),
    )


# --- shapes -----------------------------------------------------------------------------------

SHAPE_KINDS = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring", "half")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (35, 60, 220),
    "yellow": (235, 215, 30),
    "cyan": (30, 210, 220),
    "magenta": (210, 40, 200),
    "orange": (245, 135, 20),
    "purple": (115, 40, 160),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
STYLES = ("", "outline", "striped")  # "" = filled, the plain name
SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges at 32 px


def shape_classes(count: int) -> list[tuple[str, str, str]]:
    """The first `count` (kind, colour, style) classes.

    Class c takes kind c % K and colour (kind + c // K) % C, so even 10 classes differ in both
    shape and colour; after K*C classes the outline, then the striped variants follow.
    """
    colours = list(COLOURS)
    n_kinds, n_colours = len(SHAPE_KINDS), len(colours)
    out = []
    for c in range(count):
        kind = c % n_kinds
        colour = (kind + c // n_kinds) % n_colours
        style = c // (n_kinds * n_colours)
        out.append((SHAPE_KINDS[kind], colours[colour], STYLES[style]))
    return out


def max_shape_classes() -> int:
    return len(SHAPE_KINDS) * len(COLOURS) * len(STYLES)


def shapes_source(count: int, classes: int, size: int, seed: int) -> Source:
    """Procedural shapes: image i has label i % classes and is drawn from rng([seed, i]) alone."""
    if count < 0:
        raise TokenforgeError(f"--shapes-count {count}: must be >= 0")
    if not 1 <= classes <= max_shape_classes():
        raise TokenforgeError(f"--shapes-classes {classes}: must be between 1 and {max_shape_classes()}")
    if size < 8:
        raise TokenforgeError(f"--shapes-size {size}: must be >= 8 pixels")
    specs = shape_classes(classes)
    names = ["-".join(p for p in (colour, kind, style) if p) for kind, colour, style in specs]
    labels = np.arange(count, dtype=np.int64) % classes

    def load(i: int) -> Image.Image:
        kind, colour, style = specs[int(labels[i])]
        return draw_shape(kind, COLOURS[colour], style, size, np.random.default_rng([seed, i]))

    return Source(
        spec="shapes",
        class_names=names,
        mode="RGB",
        labels=labels,
        ids=[f"shapes/{seed}/{i}" for i in range(count)],
        splits=None,
        load=load,
    )


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of radius r around (cx, cy), rotated by angle."""
    if kind == "star":
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        angles = [k * math.pi / 5 for k in range(10)]
    elif kind == "cross":
        w = 0.33 * r  # half arm width
        quarter = [(w, r), (w, w), (r, w)]  # one arm tip and the inner corner, turned 4 times
        pts = [(x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, -1), (-1, 0), (0, 1)) for x, y in quarter]
        radii = [math.hypot(x, y) for x, y in pts]
        angles = [math.atan2(y, x) for x, y in pts]
    elif kind == "diamond":  # a rhombus 1 : 0.6, so that it is not a rotated square
        radii, angles = [r, 0.6 * r, r, 0.6 * r], [0, math.pi / 2, math.pi, 3 * math.pi / 2]
    elif kind == "half":  # half disc
        angles = [math.pi * k / 16 for k in range(17)]
        radii = [r] * 17
    else:
        sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[kind]
        angles = [2 * math.pi * k / sides for k in range(sides)]
        radii = [r] * sides
    return [(cx + rr * math.cos(a + angle), cy + rr * math.sin(a + angle)) for rr, a in zip(radii, angles)]


def _shape_mask(kind: str, style: str, big: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """A supersampled float mask in [0, 1] of one shape in the given style."""
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if kind in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if kind == "ring":
            q = 0.55 * r
            draw.ellipse((cx - q, cy - q, cx + q, cy + q), fill=0)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    if style == "outline":
        # outline = shape minus its erosion; the line width (1-2 output pixels) grows with the
        # shape, staying thin enough that a ring's outline keeps a gap (ring width is 0.45 r)
        width = max(2, int(round(0.14 * r)))
        eroded = mask.filter(ImageFilter.MinFilter(2 * width + 1))
        return (np.asarray(mask, dtype=np.float32) - np.asarray(eroded, dtype=np.float32)) / 255.0
    m = np.asarray(mask, dtype=np.float32) / 255.0
    if style == "striped":
        # stripes 2 output pixels wide, at an angle tied to the shape's rotation
        yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        m = m * (np.floor(t / (2 * SUPERSAMPLE)) % 2 == 0)
    return m


def draw_shape(kind: str, rgb: tuple[int, int, int], style: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Render one shape on a tinted, noisy background; every random choice comes from rng."""
    big = size * SUPERSAMPLE
    r = rng.uniform(0.22, 0.40) * big
    cx, cy = rng.uniform(r, big - r, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    grey = rng.uniform(70, 185)
    background = np.clip(grey + rng.uniform(-25, 25, size=3), 0, 255)
    colour = np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-20, 20, size=3), 0, 255)
    mask = _shape_mask(kind, style, big, cx, cy, r, angle)
    # box-downsample the mask to the output size: the mean over each SUPERSAMPLE^2 block
    alpha = mask.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    img = background * (1 - alpha) + colour * alpha + rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))


# --- imagefolder ------------------------------------------------------------------------------


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


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image file; anything unreadable is a one-line TokenforgeError."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split())
        raise TokenforgeError(f"{path}: cannot read image ({reason})") from None


# --- cifar ------------------------------------------------------------------------------------


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


# --- idx (MNIST format) -----------------------------------------------------------------------

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
