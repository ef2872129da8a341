"""Encode every image of the shards into a grid of code ids with the trained tokenizer.

  tokenforge tokenize --shards results/shard --tokenizer results/tokenizer --out results/tokenize

Writes into --out: train.parquet and test.parquet (zstd; one row per image: key, label, ids, where ids is a
fixed-size list of h*w uint8 codes, or uint16 above 256 codes, row-major over the grid; the grid and the
number of codes are in the schema metadata), tokenizer.json (the tokenizer's config) and stats.json
(storage per image: raw pixels, pixel shards, token files, raw token ids). Read a file back with
`load_tokens(path)`.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import TokenforgeError
from .io import atomic_dir, read_json, require_file, write_json
from .runtime import progress

SPLITS = ("train", "test")
COLUMNS = ("key", "label", "ids")


@dataclass
class TokenSet:
    """A split as code ids: ids[i] is the (h, w) grid of image keys[i], whose class is labels[i]."""

    keys: list[str]
    labels: np.ndarray  # int64 (N,)
    ids: np.ndarray  # int64 (N, h, w)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, required=True, help="directory written by `tokenforge shard`")
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory written by `tokenforge tokenizer`")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the token parquet files")
    parser.add_argument("--batch-size", type=int, default=512, help="images encoded at once")


def id_type(num_codes: int) -> pa.DataType:
    """The smallest unsigned integer type that holds ids 0..num_codes-1 (uint8 up to 256 codes)."""
    return pa.uint8() if num_codes <= 256 else pa.uint16()


def tokens_table(tokens: TokenSet, num_codes: int) -> pa.Table:
    """The parquet layout of `tokens`: key, label int32, ids fixed_size_list<uint8|uint16>[h*w] + metadata."""
    n, h, w = tokens.ids.shape
    if n and (tokens.ids.min() < 0 or tokens.ids.max() >= num_codes):
        raise TokenforgeError(f"ids: values must lie in [0, {num_codes})")
    kind = id_type(num_codes)
    flat = pa.array(tokens.ids.reshape(-1).astype(kind.to_pandas_dtype()), type=kind)
    table = pa.table(
        {
            "key": pa.array(tokens.keys, type=pa.string()),
            "label": pa.array(np.asarray(tokens.labels, dtype=np.int32), type=pa.int32()),
            "ids": pa.FixedSizeListArray.from_arrays(flat, h * w),
        }
    )
    return table.replace_schema_metadata({b"grid": f"{h},{w}".encode(), b"num_codes": str(num_codes).encode()})


def save_tokens(path: Path, tokens: TokenSet, num_codes: int) -> None:
    """Write `tokens` as a zstd parquet file at `path` (the caller makes it atomic)."""
    pq.write_table(tokens_table(tokens, num_codes), path, compression="zstd")


def load_tokens(path: str | Path) -> TokenSet:
    """Read a token parquet file written by `tokenforge tokenize`; bad files raise TokenforgeError naming them."""
    path = require_file(path, "token file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise TokenforgeError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise TokenforgeError(f"{path}: missing column(s) {', '.join(missing)}")
    h, w, num_codes = _read_metadata(path, table.schema)
    ids_type = table.schema.field("ids").type
    if not pa.types.is_fixed_size_list(ids_type) or ids_type.list_size != h * w:
        raise TokenforgeError(f"{path}: column ids must be a fixed-size list of {h}*{w} ids, got {ids_type}")
    ids = table.column("ids").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    ids = ids.astype(np.int64).reshape(table.num_rows, h, w)
    if num_codes is not None and ids.size and (ids.min() < 0 or ids.max() >= num_codes):
        raise TokenforgeError(f"{path}: ids out of range for {num_codes} codes (max {int(ids.max())})")
    labels = table.column("label").to_numpy().astype(np.int64)
    return TokenSet(keys=table.column("key").to_pylist(), labels=labels, ids=ids)


def _read_metadata(path: Path, schema: pa.Schema) -> tuple[int, int, int | None]:
    """(h, w, num_codes or None) from the schema metadata."""
    meta = schema.metadata or {}
    try:
        h, w = (int(v) for v in meta[b"grid"].decode().split(","))
        num_codes = int(meta[b"num_codes"]) if b"num_codes" in meta else None
    except (KeyError, ValueError):
        raise TokenforgeError(f"{path}: schema metadata needs grid as b'h,w' (got {meta.get(b'grid')!r})") from None
    return h, w, num_codes


def encode_split(model, images: np.ndarray, batch_size: int, desc: str) -> np.ndarray:
    """Code ids (N, h, w) int64 of uint8 NHWC `images`, in batches with a progress bar."""
    if batch_size < 1:
        raise TokenforgeError(f"--batch-size {batch_size}: must be at least 1")
    starts = range(0, len(images), batch_size)
    parts = [model.encode(images[i : i + batch_size]).numpy() for i in progress(starts, total=len(starts), desc=desc)]
    return np.concatenate(parts) if parts else np.zeros((0, *model.config["grid"]), dtype=np.int64)


def _shard_bytes(shards: Path) -> dict[str, float]:
    stats_path = shards / "stats.json"
    stats = read_json(stats_path)
    out = {}
    for ours, theirs in (("raw_pixels", "raw_bytes_per_image"), ("pixel_shards", "shard_bytes_per_image")):
        if not isinstance(stats, dict) or theirs not in stats:
            raise TokenforgeError(f"{stats_path}: missing key {theirs}")
        out[ours] = stats[theirs]
    return out


def _check_images(images: np.ndarray, config: dict, args: argparse.Namespace) -> None:
    want = (*config["image_size"], config["channels"])
    if tuple(images.shape[1:]) != tuple(want):
        raise TokenforgeError(
            f"{args.tokenizer / 'config.json'}: tokenizer expects {want} images, {args.shards} holds {images.shape[1:]}"
        )


def run(args: argparse.Namespace, tracker) -> None:
    from .shard import load_split
    from .tokenizer import load_tokenizer

    start = time.perf_counter()
    model = load_tokenizer(args.tokenizer)
    config = model.config
    h, w = config["grid"]
    num_codes = config["codebook_size"]
    bytes_per_image = _shard_bytes(args.shards)
    counts = {}
    with atomic_dir(args.out) as tmp:
        for split in SPLITS:
            data = load_split(args.shards, split)
            _check_images(data.images, config, args)
            ids = encode_split(model, data.images, args.batch_size, desc=f"tokenize {split}")
            save_tokens(tmp / f"{split}.parquet", TokenSet(list(data.keys), data.labels, ids), num_codes)
            counts[split] = len(data.keys)
        shutil.copyfile(args.tokenizer / "config.json", tmp / "tokenizer.json")
        token_bytes = sum((tmp / f"{split}.parquet").stat().st_size for split in SPLITS)
        bytes_per_image["tokens"] = token_bytes / max(sum(counts.values()), 1)
        bytes_per_image["token_ids_raw"] = h * w * id_type(num_codes).bit_width // 8
        stats = {
            "grid": [h, w],
            "num_codes": num_codes,
            "counts": counts,
            "bytes_per_image": bytes_per_image,
            "wall_s": time.perf_counter() - start,
        }
        write_json(tmp / "stats.json", stats)
    tracker.log_metrics({f"bytes_per_image_{k}": float(v) for k, v in bytes_per_image.items()})
    tracker.log_metrics({f"images_{k}": v for k, v in counts.items()})
    tracker.log_artifact(args.out / "stats.json")
