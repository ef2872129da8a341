"""Deterministic WebDataset shards of an image dataset, and reading a split of them back.

`write_shards` writes byte-for-byte reproducible tars (fixed mtime, owner and order; PNG has no timestamps),
`<key>.cls`, `<key>.json` and `<key>.png` per sample, keys train_000042 / test_000007; `split_of` and
`stratified_test_mask` give a source without its own split a seeded per-class one; `load_split(dir, "train")`
reads a split back as uint8 arrays (`ImageSet`) for the later stages. The json holds label, class_name and
source_id, and for a text-bearing source (tokenforge/data/multimodal.py) the sample's text record under
"text"; `load_split` returns those records as `ImageSet.texts` (None when the shards have none). The stage,
its options and its output folder: tokenforge/cli/shard.py (`tokenforge shard --help`).
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
from tokenforge.runtime import progress

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


# --- writing ----------------------------------------------------------------------------------


def write_shards(
    out: Path, source: Source, splits: np.ndarray, mode: str, image_size: int | None, shard_size: int
) -> tuple[list[dict], tuple[int, int]]:
    """Write every split's tar shards into `out`; returns the index rows and the (H, W) size."""
    rows: list[dict] = []
    size: tuple[int, int] | None = (image_size, image_size) if image_size else None
    first_id = ""
    bar = progress(total=len(source), desc="shard", unit="img")
    for split in SPLITS:
        members = np.flatnonzero(splits == split)
        width = max(6, len(str(len(members) - 1)))  # keys sort in sample order
        for shard_no, start in enumerate(range(0, len(members), shard_size)):
            shard = f"{split}-{shard_no:06d}.tar"
            with _tar_writer(out / shard) as tar:
                for j in range(start, min(start + shard_size, len(members))):
                    i = int(members[j])
                    img = prepare_image(source.image(i), mode, image_size)
                    if size is None:
                        size, first_id = (img.height, img.width), source.ids[i]
                    elif (img.height, img.width) != size:
                        raise TokenforgeError(
                            f"source {source.spec!r}: image {source.ids[i]} is {img.width}x{img.height} but "
                            f"{first_id} is {size[1]}x{size[0]}; pass --image-size N to resize all images"
                        )
                    key = f"{split}_{j:0{width}d}"
                    rows.append(_write_sample(tar, key, img, int(source.labels[i]), source, i, split, shard))
                    bar.update(1)
    bar.close()
    assert size is not None
    return rows, size


def _tar_writer(path: Path):
    """A WebDataset TarWriter whose headers are fixed: mtime 0, uid/gid 0, one owner name."""
    import webdataset as wds

    return wds.TarWriter(str(path), user=TAR_OWNER, group=TAR_OWNER, mode=0o444, mtime=0, encoder=False)


def _write_sample(tar, key: str, img: Image.Image, label: int, source: Source, i: int, split: str, shard: str) -> dict:
    png = encode_png(img)
    meta = {"label": label, "class_name": source.class_names[label], "source_id": source.ids[i]}
    if source.texts is not None:  # only then: the tars of image-only sources stay as they were
        meta["text"] = source.texts[i]
    tar.write(
        {
            "__key__": key,
            "png": png,
            "cls": str(label).encode("ascii"),
            "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
        }
    )
    row = {"key": key, "label": label, "class_name": meta["class_name"], "split": split, "shard": shard}
    if source.texts is not None:  # for stats.json; INDEX_SCHEMA leaves these out of index.parquet
        row["qa_pairs"], row["captions"] = len(meta["text"].get("qa", [])), len(meta["text"].get("captions", []))
    return {**row, "bytes": len(png)}


def shard_stats(spec: str, source: Source, rows: list[dict], size: tuple[int, int], channels: int, out: Path) -> dict:
    n = len(rows)
    shard_bytes = sum(p.stat().st_size for p in sorted(out.glob("*.tar")))
    text = {}
    if source.texts is not None:  # text-bearing sources: question-answer pairs and captions per split
        text["text"] = True
        for what in ("qa_pairs", "captions"):
            text[what] = {split: sum(r[what] for r in rows if r["split"] == split) for split in SPLITS}
    return {
        "source": spec,
        "num_classes": len(source.class_names),
        "image_size": [size[0], size[1]],
        "channels": channels,
        "counts": {split: sum(r["split"] == split for r in rows) for split in SPLITS},
        "raw_bytes_per_image": size[0] * size[1] * channels,
        "png_bytes_per_image": round(sum(r["bytes"] for r in rows) / n, 3),
        "shard_bytes_per_image": round(shard_bytes / n, 3),
        "split_from": "source" if source.splits is not None else "seed",
        **text,
    }


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


def load_split(shard_dir: str | Path, split: str) -> ImageSet:
    """Read `<shard_dir>/<split>-*.tar` with WebDataset; a corrupt sample fails, naming its tar."""
    root = require_dir(shard_dir, "shard directory")
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise TokenforgeError(f"split {split!r}: expected a plain name such as train or test")
    urls = sorted(root.glob(f"{split}-*.tar"))
    if not urls:
        raise TokenforgeError(f"{root}: no {split} shards ({split}-*.tar)")
    stats = read_json(root / "stats.json")
    class_names = read_json(root / "classes.json")
    try:
        channels, shape = int(stats["channels"]), tuple(stats["image_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TokenforgeError(f"{root / 'stats.json'}: missing or bad channels/image_size ({exc})") from None
    if channels not in MODES:
        raise TokenforgeError(f"{root / 'stats.json'}: channels must be 1 or 3, not {channels}")
    keys, labels, images, texts, where = [], [], [], [], []
    for url in urls:
        for key, label, image, text in _read_shard(url, MODES[channels], shape, len(class_names)):
            keys.append(key)
            labels.append(label)
            images.append(image)
            texts.append(text)
            where.append(url)
    has_text = [t is not None for t in texts]
    if any(has_text) and not all(has_text):  # all samples carry a text record, or none does
        k = has_text.index(False)
        raise TokenforgeError(f"{where[k]}: sample {keys[k]} has no text record, but other {split} samples do")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return ImageSet(
        keys=[keys[i] for i in order],
        labels=np.asarray([labels[i] for i in order], dtype=np.int64),
        images=np.stack([images[i] for i in order]),
        class_names=list(class_names),
        texts=[texts[i] for i in order] if any(has_text) else None,
    )


def _read_shard(url: Path, mode: str, shape: tuple, num_classes: int):
    """Yield (key, label, image HxWxC uint8, text record or None) per sample of one tar."""
    import webdataset as wds

    # no wds .decode(): its default handlers would unpickle .pyd members; PNG, cls and json only here
    dataset = wds.WebDataset(str(url), shardshuffle=False, empty_check=False)
    try:
        for sample in dataset:
            yield _decode_sample(sample, url, mode, shape, num_classes)
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
