"""Encode every image of the shards into a grid of code ids with the trained tokenizer.

  tokenforge tokenize --shards results/shard --tokenizer results/tokenizer --out results/tokenize

Writes into --out: train.parquet and test.parquet (one row per image: key, label, ids), tokenizer.json (the
tokenizer's config) and stats.json (bytes per image: raw pixels, pixel shards, token files on disk, packed
token ids). `ids` holds each image's grid row-major as a fixed-size binary of ceil(h*w*bits/8) bytes, where
bits = max(1, ceil(log2(num_codes))) for the (pruned) codebook: token i fills bits i*bits .. (i+1)*bits-1 of
a little-endian bit stream (bit j of the stream is bit j%8 of byte j//8; lowest bit of an id first). The
schema metadata holds grid (b"h,w"), num_codes and bits. Read a file back with `load_tokens(path)`, which
also reads the earlier layout (ids as a fixed-size list of uint8/uint16).

Shards of a text-bearing source (scenes, vqa2, clevr, coco-captions) carry a text record per image; the token
files then have a `text` column (the record's JSON) and stats.json adds "text": true and the question-answer
pairs and captions per split ("qa_pairs", "captions").
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from tokenforge.io import atomic_dir, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, required=True, help="directory written by `tokenforge shard`")
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory written by `tokenforge tokenizer`")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the token parquet files")
    parser.add_argument("--batch-size", type=int, default=512, help="images encoded at once")


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.data.shards import load_split
    from tokenforge.data.tokens import (
        SPLITS,
        TokenSet,
        id_bits,
        packed_size,
        save_tokens,
    )
    from tokenforge.tokenizer.encode import check_images, encode_split, shard_bytes
    from tokenforge.tokenizer.vq import load_tokenizer

    start = time.perf_counter()
    model = load_tokenizer(args.tokenizer)
    config = model.config
    h, w = config["grid"]
    num_codes = config["codebook_size"]  # pruned: what the ids are numbered by
    bytes_per_image = shard_bytes(args.shards)
    counts = {}
    text_counts: dict[str, dict[str, int]] = {}  # qa_pairs / captions per split, for shards with text
    with atomic_dir(args.out) as tmp:
        for split in SPLITS:
            data = load_split(args.shards, split)
            check_images(data.images, config, args)
            ids = encode_split(model, data.images, args.batch_size, desc=f"tokenize {split}")
            texts = getattr(data, "texts", None)
            save_tokens(tmp / f"{split}.parquet", TokenSet(list(data.keys), data.labels, ids, texts), num_codes)
            counts[split] = len(data.keys)
            if texts is not None:
                text_counts.setdefault("qa_pairs", {})[split] = sum(len(t.get("qa", [])) for t in texts)
                text_counts.setdefault("captions", {})[split] = sum(len(t.get("captions", [])) for t in texts)
        shutil.copyfile(args.tokenizer / "config.json", tmp / "tokenizer.json")
        token_bytes = sum((tmp / f"{split}.parquet").stat().st_size for split in SPLITS)
        bytes_per_image["tokens"] = token_bytes / max(sum(counts.values()), 1)
        bytes_per_image["token_ids_raw"] = packed_size(h * w, id_bits(num_codes))
        stats = {
            "grid": [h, w],
            "num_codes": num_codes,
            "bits": id_bits(num_codes),
            "counts": counts,
            "bytes_per_image": bytes_per_image,
            "wall_s": time.perf_counter() - start,
        }
        if text_counts:
            stats = {**stats, "text": True, **text_counts}
        write_json(tmp / "stats.json", stats)
    tracker.log_dataset(f"{args.shards.name}", args.shards, "source", {"images": int(sum(counts.values()))})
    tracker.log_metrics({f"bytes_per_image_{k}": float(v) for k, v in bytes_per_image.items()})
    tracker.log_metrics({f"images_{k}": v for k, v in counts.items()})
    tracker.log_artifact(args.out / "stats.json")
