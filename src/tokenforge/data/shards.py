"""Deterministic WebDataset shards of an image dataset: the split of a source, and reading a split back.

The shard stage (tokenforge/cli/shard.py, writer: tokenforge/data/shard_writer.py) writes byte-for-byte
reproducible tars, `<key>.cls`, `<key>.json` and `<key>.png` per sample, keys train_000042 / test_000007, numbered
in key order; with `shard.parts` the tars of each part are in `part-KKK/`. `split_of` and `stratified_test_mask`
give a source without its own split a seeded per-class one. Reading streams: `iter_split(dir, "train", batch)`
yields uint8 `ImageSet` batches in key order, tar by tar; `sample_split` keeps a seeded bounded sample; only
`load_split` holds a whole split, for the stages that need it at once. The json holds label, class_name and
source_id, and for a text-bearing source (tokenforge/data/multimodal.py) the sample's text record under "text",
returned as `ImageSet.texts` (None when the shards have none). Options: `tokenforge shard --help`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from tokenforge.data import MODES
from tokenforge.data.sources import Source
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json, require_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
TAR_OWNER = "tokenforge"  # fixed user/group names (uid/gid 0) so tars do not depend on who ran us

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("label", pa.int32()),
        ("class_name", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("bytes", pa.int64()),
    ]
)


def check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.test_fraction < 1:  # also rejects NaN
        raise TokenforgeError(f"--test-fraction {args.test_fraction}: must be in [0, 1)")
    if args.shard_size < 1:
        raise TokenforgeError(f"--shard-size {args.shard_size}: must be >= 1")
    if args.image_size is not None and args.image_size < 1:
        raise TokenforgeError(f"--image-size {args.image_size}: must be >= 1")
    if args.seed < 0:
        raise TokenforgeError(f"--seed {args.seed}: must be >= 0")


# --- split ------------------------------------------------------------------------------------


def split_of(source: Source, test_fraction: float, seed: int) -> np.ndarray:
    """'train'/'test' per sample: the source's own split if it has one, else stratified by seed."""
    if source.splits is not None:
        log.info("source %s has its own train/test split; --test-fraction is not used", source.spec)
        return np.asarray(source.splits, dtype=object)
    is_test = stratified_test_mask(source.labels, test_fraction, seed)
    return np.where(is_test, "test", "train").astype(object)


def stratified_test_mask(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: round(fraction * n) samples of each class, but >= 1 stays in train.

    Each class draws from its own generator rng([seed, label]), so a class's split does not
    change when other classes are added or removed.
    """
    is_test = np.zeros(len(labels), dtype=bool)
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    for label, members in zip(classes, np.split(order, starts[1:])):
        n_test = min(math.floor(test_fraction * len(members) + 0.5), len(members) - 1)
        chosen = np.random.default_rng([seed, int(label)]).permutation(members)[:n_test]
        is_test[chosen] = True
    return is_test


# --- images -----------------------------------------------------------------------------------


def prepare_image(img: Image.Image, mode: str, size: int | None) -> Image.Image:
    """Convert to `mode`; with `size`, centre-crop to a square and resize bicubic to size x size."""
    if img.mode != mode:
        img = img.convert(mode)
    if size is not None:
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if side != size:
            img = img.resize((size, size), Image.Resampling.BICUBIC)
    return img


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes; PIL writes no time chunk, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# --- reading ----------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """One split of a shard folder in memory, in key order."""

    keys: list[str]
    labels: np.ndarray  # int64 (N,)
    images: np.ndarray  # uint8 (N, H, W, C)
    class_names: list[str]
    texts: list[dict] | None = None  # per-sample text records of a text-bearing source, else None

    def __len__(self) -> int:
        return len(self.keys)


def shard_urls(shard_dir: str | Path, split: str, part: int | None = None) -> list[Path]:
    """The split's tars in key order: `<split>-*.tar` of the folder, or of its `part-*/` folders when the shards
    were written by several jobs (`tokenforge shard --part K --parts P`); tars are numbered in key order. With
    `part`, only `part-<part>/`'s (which may hold none of a split)."""
    root = require_dir(shard_dir, "shard directory")
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise TokenforgeError(f"split {split!r}: expected a plain name such as train or test")
    if part is not None:
        return sorted(require_dir(root / f"part-{part:03d}", "shard part").glob(f"{split}-*.tar"))
    urls = sorted([*root.glob(f"{split}-*.tar"), *root.glob(f"part-*/{split}-*.tar")], key=lambda u: u.name)
    if not urls:
        raise TokenforgeError(f"{root}: no {split} shards ({split}-*.tar)")
    return urls


def _shard_layout(root: Path) -> tuple[str, tuple, list[str]]:
    """(PIL mode, (H, W), class names) of a shard folder, from its stats.json and classes.json."""
    stats = read_json(root / "stats.json")
    class_names = read_json(root / "classes.json")
    try:
        channels, shape = int(stats["channels"]), tuple(stats["image_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenforgeError(f"{root / 'stats.json'}: missing or bad channels/image_size ({exc})") from None
    if channels not in MODES:
        raise TokenforgeError(f"{root / 'stats.json'}: channels must be 1 or 3, not {channels}")
    return MODES[channels], shape, list(class_names)


def iter_split(
    shard_dir: str | Path, split: str, batch_size: int, keep=None, part: int | None = None,
    tars: list[int] | None = None, per_tar: bool = False,
):
    """`ImageSet` batches of at most `batch_size` images of a split, in key order, streamed tar by tar.

    With `keep` (a sorted array of positions in the split), only those samples: a bounded sample of a large
    split. With `part`, only the tars of that part of the shard job (`shard_urls`); with `tars`, only the tars of
    these indices in that list (`keep` then counts within them); with `per_tar`, a batch also ends with each tar.
    Memory holds one batch. A corrupt sample fails, naming its tar; the samples carry a text record all or none."""
    if batch_size < 1:
        raise TokenforgeError(f"batch size {batch_size}: must be at least 1")
    root = Path(shard_dir)
    urls = shard_urls(root, split, part)
    if tars is not None:
        urls = [urls[i] for i in tars]
    mode, shape, class_names = _shard_layout(root)
    wanted = None if keep is None else iter(np.asarray(keep, dtype=np.int64).tolist())
    target = None if wanted is None else next(wanted, None)
    batch: list[tuple] = []
    has_text = None
    position = 0
    for url in urls:
        if wanted is not None and target is None:
            break
        for raw in _read_shard(url):
            if wanted is not None:
                if target is None:
                    break
                if position != target:  # skipped before its PNG is decoded
                    position += 1
                    continue
                target = next(wanted, None)
            position += 1
            sample = _decode_sample(raw, url, mode, shape, len(class_names))
            if has_text is None:
                has_text = sample[3] is not None
            elif (sample[3] is not None) != has_text:
                which = "has no text record, but other" if has_text else "has a text record, but no other"
                raise TokenforgeError(f"{url}: sample {sample[0]} {which} {split} samples do")
            batch.append(sample)
            if len(batch) == batch_size:
                yield _image_set(batch, class_names, has_text)
                batch = []
        if per_tar and batch:
            yield _image_set(batch, class_names, has_text)
            batch = []
    if batch:
        yield _image_set(batch, class_names, has_text)


def _image_set(samples: list[tuple], class_names: list[str], has_text: bool) -> ImageSet:
    return ImageSet(
        keys=[s[0] for s in samples],
        labels=np.asarray([s[1] for s in samples], dtype=np.int64),
        images=np.stack([s[2] for s in samples]),
        class_names=list(class_names),
        texts=[s[3] for s in samples] if has_text else None,
    )


def concat(parts: list[ImageSet], shard_dir: Path, split: str) -> ImageSet:
    """One ImageSet of the batches of `iter_split` (an empty split: no images, shape from stats.json)."""
    if not parts:
        mode, shape, class_names = _shard_layout(Path(shard_dir))
        empty = np.zeros((0, *shape, len(mode)), dtype=np.uint8)
        return ImageSet([], np.zeros(0, dtype=np.int64), empty, class_names)
    texts = [t for p in parts for t in p.texts] if parts[0].texts is not None else None
    return ImageSet(
        keys=[k for p in parts for k in p.keys],
        labels=np.concatenate([p.labels for p in parts]),
        images=np.concatenate([p.images for p in parts]),
        class_names=parts[0].class_names,
        texts=texts,
    )


def load_split(shard_dir: str | Path, split: str) -> ImageSet:
    """The whole split in memory, in key order: for stages that need every image at once (the pixel baseline,
    TokenAdapt). Large data streams with `iter_split` or samples with `sample_split` instead."""
    return concat(list(iter_split(shard_dir, split, 4096)), Path(shard_dir), split)


def sample_split(shard_dir: str | Path, split: str, max_images: int | None, seed: int) -> ImageSet:
    """A seeded sample of at most `max_images` images of a split, in key order, streamed into one array allocated
    up front: memory holds the sample once. The whole split when it has no more than that (or max_images is None)."""
    root = Path(shard_dir)
    count = split_count(root, split)
    keep = None
    if max_images is not None and max_images < count:
        keep = np.sort(np.random.default_rng([seed, count]).choice(count, size=max_images, replace=False))
    size = count if keep is None else len(keep)
    mode, shape, class_names = _shard_layout(root)
    out = ImageSet([], np.empty(size, np.int64), np.empty((size, *shape, len(mode)), np.uint8), class_names)
    for batch in iter_split(root, split, 1024, keep=keep):
        at, n = len(out.keys), len(batch.keys)
        if at + n > size:
            raise TokenforgeError(f"{root}: stats.json counts {count} {split} images, the shards hold more")
        out.images[at : at + n], out.labels[at : at + n] = batch.images, batch.labels
        out.keys += batch.keys
        if batch.texts is not None:
            out.texts = out.texts if out.texts is not None else []
            out.texts.extend(batch.texts)
    if len(out.keys) != size:
        raise TokenforgeError(f"{root}: stats.json counts {count} {split} images, the shards hold {len(out.keys)}")
    return out


def split_count(shard_dir: Path, split: str) -> int:
    """The number of images of a split, from the shard stage's stats.json (0 for a split it does not list)."""
    stats = read_json(Path(shard_dir) / "stats.json")
    try:
        return int(stats["counts"].get(split, 0))
    except (AttributeError, KeyError, TypeError, ValueError):
        raise TokenforgeError(f"{Path(shard_dir) / 'stats.json'}: missing or bad key counts") from None


def _read_shard(url: Path):
    """Yield the raw WebDataset samples (dicts of bytes) of one tar; a broken tar fails naming it."""
    import webdataset as wds

    # no wds .decode(): its default handlers would unpickle .pyd members; PNG, cls and json only here. The caller
    # picks the tars (per part, rank or DataLoader worker: data/loader.py), so no splitter drops this one.
    dataset = wds.WebDataset(str(url), shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None)
    try:
        yield from dataset
    except (OSError, ValueError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise TokenforgeError(f"{url}: corrupt shard ({_reason(exc)})") from None


def _decode_sample(
    sample: dict, url: Path, mode: str, shape: tuple, num_classes: int
) -> tuple[str, int, np.ndarray, dict | None]:
    key = sample.get("__key__", "?")
    try:
        label = int(sample["cls"])
        with Image.open(io.BytesIO(sample["png"])) as img:
            img.load()
            if img.mode != mode:
                raise ValueError(f"PNG mode {img.mode}, expected {mode}")
            array = np.asarray(img, dtype=np.uint8)
        text = _sample_text(sample)
    except (KeyError, OSError, SyntaxError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise TokenforgeError(f"{url}: corrupt sample {key} ({_reason(exc)})") from None
    array = array.reshape(array.shape[0], array.shape[1], -1)
    if array.shape[:2] != shape:
        raise TokenforgeError(f"{url}: sample {key} is {array.shape[1]}x{array.shape[0]}, stats.json says {shape}")
    if not 0 <= label < num_classes:
        raise TokenforgeError(f"{url}: sample {key} has label {label}, outside 0..{num_classes - 1}")
    return key, label, array, text


def _sample_text(sample: dict) -> dict | None:
    """The text record in the sample's json ("text"), or None when it has none (or no json)."""
    if "json" not in sample:
        return None
    meta = json.loads(sample["json"])
    if not isinstance(meta, dict):
        raise ValueError("json is not an object")
    text = meta.get("text")
    if text is not None and not isinstance(text, dict):
        raise ValueError("json key 'text' is not an object")
    return text


def _reason(exc: BaseException) -> str:
    """One line for an exception; webdataset appends the stream and url to the args, drop them."""
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return f"{type(exc).__name__}: {' '.join(message.split())}"
