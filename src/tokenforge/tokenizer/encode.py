"""Encode the shards' images to code ids: the pieces of the `tokenize` stage (tokenforge/cli/tokenize.py).

The token files it writes are `tokenforge.data.tokens`'s format.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json
from tokenforge.runtime import progress
from tokenforge.tokenizer.vq import VQTokenizer


def encode_split(model: VQTokenizer, images: np.ndarray, batch_size: int, desc: str) -> np.ndarray:
    """Code ids (N, h, w) int64 of uint8 NHWC `images`, in batches with a progress bar."""
    if batch_size < 1:
        raise TokenforgeError(f"--batch-size {batch_size}: must be at least 1")
    starts = range(0, len(images), batch_size)
    parts = [model.encode(images[i : i + batch_size]).numpy() for i in progress(starts, total=len(starts), desc=desc)]
    return np.concatenate(parts) if parts else np.zeros((0, *model.config["grid"]), dtype=np.int64)


def stream_split(model: VQTokenizer, shards: Path, split: str, writer, args: argparse.Namespace, part=None) -> dict:
    """Encode a split's images as they stream from the tars into `writer` (a `TokenWriter`), `args.batch_size`
    at a time; with `args.workers`, DataLoader workers decode the tars (tokenforge/data/loader.py), pinned for a
    GPU. Memory holds a few tars of images and one row group of ids. Returns the split's counts."""
    from tokenforge.data.loader import tar_sets
    from tokenforge.data.shards import split_count
    from tokenforge.data.tokens import TokenSet

    if args.batch_size < 1:
        raise TokenforgeError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.workers < 0:
        raise TokenforgeError(f"--workers {args.workers}: must be >= 0")
    counts = {"images": 0, "qa_pairs": 0, "captions": 0}
    total = split_count(shards, split) if part is None else None
    bar = progress(total=total, desc=f"tokenize {split}", unit="img")
    pin = next(model.parameters()).device.type == "cuda"
    for tar in tar_sets(shards, split, part=part, workers=args.workers, pin=pin):
        check_images(tar.images, model.config, args)
        for i in range(0, len(tar.keys), args.batch_size):
            rows = slice(i, i + args.batch_size)
            texts = tar.texts[rows] if tar.texts is not None else None
            writer.add(TokenSet(tar.keys[rows], tar.labels[rows], model.encode(tar.images[rows]).numpy(), texts))
        counts["images"] += len(tar.keys)
        for text in tar.texts or ():
            counts["qa_pairs"] += len(text.get("qa", []))
            counts["captions"] += len(text.get("captions", []))
        bar.update(len(tar.keys))
    bar.close()
    return counts


def shard_bytes(shards: Path) -> dict[str, float]:
    """Bytes per image of raw pixels and of pixel shards, from the shard stage's stats.json."""
    stats_path = shards / "stats.json"
    stats = read_json(stats_path)
    out = {}
    for ours, theirs in (("raw_pixels", "raw_bytes_per_image"), ("pixel_shards", "shard_bytes_per_image")):
        if not isinstance(stats, dict) or theirs not in stats:
            raise TokenforgeError(f"{stats_path}: missing key {theirs}")
        out[ours] = stats[theirs]
    return out


def check_images(images: np.ndarray, config: dict, args: argparse.Namespace) -> None:
    """The shards' images must have the size and channels the tokenizer was trained on."""
    want = (*config["image_size"], config["channels"])
    if tuple(images.shape[1:]) != tuple(want):
        raise TokenforgeError(
            f"{args.tokenizer / 'config.json'}: tokenizer expects {want} images, {args.shards} holds {images.shape[1:]}"
        )
