"""Read an image dataset and write deterministic WebDataset tar shards plus a Parquet index.

    tokenforge shard --source shapes --out results/demo/shard
    tokenforge shard --source cifar:data/cifar-10-batches-py --out results/c10/shard
    tokenforge shard --source imagefolder:data/imagenet100 --image-size 64 --out results/in100/shard
    tokenforge shard --source idx:/usr/share/datasets/fashion-mnist --max-per-class 500 --out results/fm/shard
    tokenforge shard --source scenes --scenes-count 5000 --scenes-size 32 --out results/scenes/shard
    tokenforge shard --source vqa2:data/vqa2+clevr:data/CLEVR_v1.0 --image-size 64 --out results/vqa/shard

Sources: digits, shapes, imagefolder:PATH, cifar:PATH, idx:PATH, and the text-bearing scenes, vqa2:PATH,
clevr:PATH, coco-captions:PATH, whose images each carry a text record (questions and answers, captions, object
names): the registry `tokenforge.data.SOURCES`, one reader per module of tokenforge/data/sources/. An installed
plugin's source name works the same, and so does a reader of one's own by import path
(`--source mylab.data:open_scans:/data/scans`). Specs joined with '+' are one source whose label k is the k-th
spec's dataset. A source with its own train/test split keeps it; otherwise each class is split by --seed and
--test-fraction.
--max-per-class N keeps the first N images of each class, in source order, before any of this: per
original split (N train and N test) when the source has one, otherwise before the seeded split.

Output folder:
    train-000000.tar, ...   WebDataset shards: <key>.cls, <key>.json, <key>.png per sample (the json holds
                            label, class_name, source_id and, for a text-bearing source, the record as "text")
    test-000000.tar, ...    keys are train_000042 / test_000007 (no dots)
    index.parquet           key, label, class_name, split, shard, bytes (PNG bytes)
    classes.json            class names in label order
    stats.json              counts and bytes per image (raw, PNG, shard); with text, "text": true and the
                            question-answer pairs and captions per split ("qa_pairs", "captions")

The tar files are byte-for-byte reproducible (fixed mtime, owner, order; PNG has no timestamps).
Several jobs: `--parts P --part K` writes the K-th contiguous run of each split's tars (the same tars, keys and
bytes one job writes) into its own folder (the pipeline: <shard>/part-KKK); `--parts P --gather` then joins the
parts' index.parquet, classes.json and stats.json into --out. stats.json records the job's own peak RSS and CPU
time ("resources"). Later stages stream a split back with `tokenforge.data.shards.iter_split` (uint8 batches in key
order).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tokenforge.data import MODES, source_kinds
from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, write_json

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        required=True,
        help=f"{source_kinds()}; or a reader of your own by import path, package.module:function[:PATH]; "
        "SPEC+SPEC joins sources, one label per source (see tokenforge/data/sources/)",
    )
    parser.add_argument("--out", required=True, help="output folder for the shards, index and stats")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the train/test split and of the shapes and scenes sources"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="fraction of each class held out for test, in [0, 1); ignored when the source has its own split",
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
    parser.add_argument(
        "--max-per-class",
        type=int,
        default=None,
        help="keep only the first N images of each class, in source order (no randomness), per original split "
        "when the source has one (N train + N test), else before the seeded split; None keeps all",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="centre-crop to square and resize (bicubic) every image to N x N; None keeps the source's sizes, "
        "which must then all match",
    )
    parser.add_argument(
        "--channels",
        type=int,
        choices=sorted(MODES),
        default=None,
        help="1 = grayscale, 3 = RGB; None keeps the source's own (digits 1, the others 3)",
    )
    group = parser.add_argument_group("several jobs (scatter/gather: the pipeline's shard.parts)")
    group.add_argument(
        "--parts", type=int, default=1, help="the shards are written by P jobs, each a contiguous run of each split's tars"
    )
    group.add_argument(
        "--part", type=int, default=None, help="write part K (0..P-1) of --parts P into --out (the pipeline: <shard>/part-KKK)"
    )
    group.add_argument(
        "--gather",
        action="store_true",
        help="join --out/part-000 .. part-<P-1> into --out's index.parquet, classes.json and stats.json",
    )
    group = parser.add_argument_group("shapes source")
    group.add_argument("--shapes-count", type=int, default=2000, help="number of images to generate")
    group.add_argument("--shapes-classes", type=int, default=10, help="number of classes (shape x colour x style)")
    group.add_argument("--shapes-size", type=int, default=32, help="image side in pixels")
    group = parser.add_argument_group("scenes source")
    group.add_argument("--scenes-count", type=int, default=1000, help="number of scenes to generate")
    group.add_argument("--scenes-size", type=int, default=32, help="image side in pixels")


def run(args: argparse.Namespace, tracker) -> None:
    import pyarrow.parquet as pq

    from tokenforge.data.shard_writer import gather_parts, shard_stats, write_shards
    from tokenforge.data.shards import check_args, split_of
    from tokenforge.runtime import job_resources

    start = time.perf_counter()
    check_args(args)
    _check_parts(args)
    if args.gather:
        stats = gather_parts(Path(args.out), args.parts)
        write_json(Path(args.out) / "stats.json", {**stats, "wall_s": round(time.perf_counter() - start, 3), "resources": job_resources()})
        return _log_stats(tracker, Path(args.out), stats)
    source = _open(args)
    mode = MODES[args.channels] if args.channels else source.mode
    tracker.log_params(
        {
            "source": args.source,
            "seed": args.seed,
            "test_fraction": args.test_fraction,
            "shard_size": args.shard_size,
            "max_per_class": args.max_per_class,
            "image_size": args.image_size,
            "channels": len(mode),
            "parts": args.parts,
        }
    )
    splits = split_of(source, args.test_fraction, args.seed)
    out = Path(args.out)
    with atomic_dir(out) as tmp:
        index, size = write_shards(tmp, source, splits, mode, args.image_size, args.shard_size, args.part or 0, args.parts)
        if size is None and args.parts == 1:
            raise TokenforgeError(f"source {args.source!r}: no images")
        write_json(tmp / "classes.json", source.class_names)
        stats = shard_stats(args.source, source, index, size, len(mode), tmp)
        stats["max_per_class"] = args.max_per_class
        if args.part is not None:
            stats["part"] = [args.part, args.parts]
        stats["wall_s"] = round(time.perf_counter() - start, 3)
        stats["resources"] = job_resources()
        write_json(tmp / "stats.json", stats)
        pq.read_metadata(tmp / "index.parquet")  # written whole
    log.info("wrote %d train + %d test images to %s", stats["counts"]["train"], stats["counts"]["test"], out)
    _log_stats(tracker, out, stats)


def _check_parts(args: argparse.Namespace) -> None:
    if args.parts < 1:
        raise TokenforgeError(f"--parts {args.parts}: must be >= 1")
    if args.gather and args.part is not None:
        raise TokenforgeError("--gather joins the parts; it takes --parts P, not --part")
    if not args.gather and args.parts > 1 and args.part is None:
        raise TokenforgeError(f"--parts {args.parts}: pass --part K (0..{args.parts - 1}), or --gather")
    if args.part is not None and not 0 <= args.part < args.parts:
        raise TokenforgeError(f"--part {args.part}: must be in 0..{args.parts - 1} for --parts {args.parts}")


def _log_stats(tracker, out: Path, stats: dict) -> None:
    metrics = ("png_bytes_per_image", "shard_bytes_per_image", "raw_bytes_per_image", "num_classes")
    tracker.log_metrics({"train_count": stats["counts"]["train"], "test_count": stats["counts"]["test"]})
    tracker.log_metrics({k: stats[k] for k in metrics if stats.get(k) is not None})
    tracker.log_artifact(out / "stats.json")
    tracker.log_artifact(out / "classes.json")


def _open(args: argparse.Namespace):
    """The source the flags name, cut to --max-per-class images per class; no images is an error."""
    from tokenforge.data.sources import first_per_class, open_source

    if args.max_per_class is not None and args.max_per_class < 1:  # before a slow source is scanned
        raise TokenforgeError(f"--max-per-class {args.max_per_class}: must be >= 1")
    source = open_source(
        args.source,
        seed=args.seed,
        shapes_count=args.shapes_count,
        shapes_classes=args.shapes_classes,
        shapes_size=args.shapes_size,
        scenes_count=args.scenes_count,
        scenes_size=args.scenes_size,
    )
    source = first_per_class(source, args.max_per_class)
    if len(source) == 0:
        raise TokenforgeError(f"source {args.source!r}: no images")
    return source
