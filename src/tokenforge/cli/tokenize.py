"""Encode every image of the shards into a grid of code ids with the trained tokenizer.

  tokenforge tokenize --shards results/shard --tokenizer results/tokenizer --out results/tokenize

Writes into --out: train.parquet and test.parquet (one row per image: key, label, ids), tokenizer.json (the
tokenizer's config) and stats.json (bytes per image: raw pixels, pixel shards, token files on disk, packed
token ids). `ids` holds each image's grid row-major as a fixed-size binary of ceil(h*w*bits/8) bytes, where
bits = max(1, ceil(log2(num_codes))) for the (pruned) codebook: token i fills bits i*bits .. (i+1)*bits-1 of
a little-endian bit stream (bit j of the stream is bit j%8 of byte j//8; lowest bit of an id first). The
schema metadata holds grid (b"h,w"), num_codes and bits. Read a file back with `load_tokens(path)`, which
also reads the earlier layout (ids as a fixed-size list of uint8/uint16).

The images stream from the tars a batch at a time and the ids go out a row group at a time, so memory does not
grow with the dataset; encoding runs on the job's GPU where it has one (--device). Several jobs: with
--part K, only the shard stage's part-K tars (`tokenforge shard --part K`) into a part folder; --gather P then
joins part folders 0..P-1 into --out, in key order (the pipeline's shard.parts: one tokenize job per part).

Shards of a text-bearing source (scenes, vqa2, clevr, coco-captions) carry a text record per image; the token
files then have a `text` column (the record's JSON) and stats.json adds "text": true and the question-answer
pairs and captions per split ("qa_pairs", "captions").
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, read_json, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, required=True, help="directory written by `tokenforge shard`")
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory written by `tokenforge tokenizer`")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the token parquet files")
    parser.add_argument("--batch-size", type=int, default=512, help="images encoded at once")
    parser.add_argument(
        "--device", default="auto", help="auto: the job's GPU where CUDA is there, else the CPU; or cpu, cuda:0, ..."
    )
    parser.add_argument(
        "--workers", type=int, default=0,
        help="DataLoader processes that decode the tars while the model encodes (for a GPU job: its CPUs - 1); "
        "0 decodes in this process",
    )
    group = parser.add_argument_group("several jobs (the pipeline's shard.parts)")
    group.add_argument("--part", type=int, default=None, help="encode only the shards' part-K tars into --out")
    group.add_argument(
        "--gather", type=Path, nargs="+", default=None, metavar="PART_DIR",
        help="join these --part outputs, in the order given, into --out (no encoding)",
    )


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.data.tokens import SPLITS, TokenWriter, id_bits, packed_size
    from tokenforge.runtime import job_device, job_resources, steady_heap
    from tokenforge.tokenizer.encode import shard_bytes, stream_split
    from tokenforge.tokenizer.vq import load_tokenizer

    start = time.perf_counter()
    steady_heap()  # batch after batch of encoder activations must not grow a fragmented heap
    if args.gather is not None and args.part is not None:
        raise TokenforgeError("--gather joins --part outputs; pass one or the other")
    bytes_per_image = shard_bytes(args.shards)  # checked before any encoding
    model = None if args.gather else load_tokenizer(args.tokenizer).to(job_device(args.device))
    config = read_json(args.tokenizer / "config.json")
    (h, w), num_codes = config["grid"], config["codebook_size"]  # pruned: what the ids are numbered by
    with_text = bool(read_json(args.shards / "stats.json").get("text"))
    counts, text_counts = {}, {"qa_pairs": {}, "captions": {}}
    with atomic_dir(args.out) as tmp:
        for split in SPLITS:
            writer = TokenWriter(tmp / f"{split}.parquet", num_codes, (h, w), with_text)
            if args.gather:
                split_counts = _gather_split(args.gather, split, writer)
            else:
                split_counts = stream_split(model, args.shards, split, writer, args, part=args.part)
            counts[split] = writer.close()
            for what in text_counts:
                text_counts[what][split] = split_counts[what]
        shutil.copyfile(args.tokenizer / "config.json", tmp / "tokenizer.json")
        token_bytes = sum((tmp / f"{split}.parquet").stat().st_size for split in SPLITS)
        bytes_per_image["tokens"] = token_bytes / max(sum(counts.values()), 1)
        bytes_per_image["token_ids_raw"] = packed_size(h * w, id_bits(num_codes))
        stats = {"grid": [h, w], "num_codes": num_codes, "bits": id_bits(num_codes), "counts": counts}
        stats.update(bytes_per_image=bytes_per_image, wall_s=time.perf_counter() - start, resources=job_resources())
        if args.part is not None:
            stats["part"] = args.part
        if args.gather:
            stats["part_resources"] = [_part_resources(d) for d in args.gather]
        if with_text:
            stats = {**stats, "text": True, **text_counts}
        write_json(tmp / "stats.json", stats)
    tracker.log_dataset(f"{args.shards.name}", args.shards, "source", {"images": int(sum(counts.values()))})
    tracker.log_metrics({f"bytes_per_image_{k}": float(v) for k, v in bytes_per_image.items()})
    tracker.log_metrics({f"images_{k}": v for k, v in counts.items()})
    tracker.log_artifact(args.out / "stats.json")


def _gather_split(part_dirs: list[Path], split: str, writer) -> dict:
    """Append each part's token file of `split`, a row group at a time, to `writer`; the text counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokenforge.io import require_file

    counts = {"qa_pairs": 0, "captions": 0}
    for part in part_dirs:
        path = require_file(part / f"{split}.parquet", "token part")
        meta = pq.read_schema(path).metadata
        if meta.get(b"num_codes") != str(writer.num_codes).encode():
            raise TokenforgeError(f"{path}: made with another tokenizer ({meta.get(b'num_codes')!r} codes)")
        for batch in pq.ParquetFile(path).iter_batches():
            writer.add_table(pa.Table.from_batches([batch]).replace_schema_metadata(meta))
        stats = read_json(part / "stats.json")
        for what in counts:
            counts[what] += stats.get(what, {}).get(split, 0)
    return counts


def _part_resources(part: Path) -> dict:
    stats = read_json(part / "stats.json")
    return {"wall_s": stats.get("wall_s"), **stats.get("resources", {})}
