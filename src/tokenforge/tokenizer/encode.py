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
