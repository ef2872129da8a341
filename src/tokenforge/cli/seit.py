r"""Read and write SeiT's released token format: a SeiT token release becomes a token set, ours becomes a release.

  tokenforge seit export --tokens results/tokenize --tokenizer results/tokenizer \
      --synonyms results/synonyms.json --out seit
  tokenforge seit import --src DATA_DIR --out results/tokenize_seit [--grid 32 32]

The format, as naver-ai/seit reads it, and the choices made here (ids up to 509, a grid file beside each
split, strict reading, the codebook read weights-only): see tokenforge/data/seit.py. Export writes NAME-train
and NAME-val from our train.parquet and test.parquet; import writes our token layout (train.parquet,
test.parquet, codebook.safetensors, tokenizer.json, synonyms.json when the release has synonyms, stats.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("export", "import"), help="export our tokens, or import a SeiT release")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--name", default=None, help="release name: files NAME-train-token.data.bin.gz, ...; "
                        "without it, export uses tokenforge and import the one name found in --src")
    export = parser.add_argument_group("export")
    export.add_argument("--tokens", type=Path, help="directory written by `tokenforge tokenize`")
    export.add_argument("--tokenizer", type=Path, help="directory written by `tokenforge tokenizer`")
    export.add_argument(
        "--synonyms", type=Path, help="JSON written by `tokenforge synonyms`; without it the release has no synonyms"
    )
    imp = parser.add_argument_group("import")
    imp.add_argument("--src", type=Path, help="directory of a SeiT token release")
    imp.add_argument("--synonyms-k", type=int, default=5,
                     help="synonyms per code computed from the codebook when the release has none")
    imp.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"),
                     help="token grid per image; without it: the release's grid file, else a square")


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.data.seit import need_options, export_tokens, import_release

    if args.action == "export":
        need_options(args, "tokens", "tokenizer")
        result = export_tokens(args.tokens, args.tokenizer, args.synonyms, args.out, args.name or "tokenforge")
        tracker.log_metrics({"bytes_per_image_seit": result["seit_bytes_per_image"]})
    else:
        need_options(args, "src")
        stats = import_release(args.src, args.out, args.grid, args.name, args.synonyms_k)
        tracker.log_metrics({f"bytes_per_image_{k}": float(v) for k, v in stats["bytes_per_image"].items()})
        tracker.log_artifact(args.out / "stats.json")
        result = stats
    tracker.log_metrics({f"images_{k}": v for k, v in result["counts"].items()})
