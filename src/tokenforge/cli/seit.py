r"""Read and write SeiT's released token format: a SeiT token release becomes a token set, ours becomes a release.

  tokenforge seit export --tokens results/tokenize --tokenizer results/tokenizer \
      --synonyms results/synonyms.json --out seit
  tokenforge seit import --src DATA_DIR --out results/tokenize_seit [--grid 32 32]

The format, as naver-ai/seit reads it (datasets.py: TokenDataset, load_from_gz, get_data_index_of;
token_transform.py: build_codebook, ReplaceSynonym), for each split PREFIX (their release: imagenet1k-train and
imagenet1k-val):

  PREFIX-token.data.bin.gz   gzip of every image's ids back to back, row-major; an id below 255 is one byte, an
                             id of 255 or more is the byte 255 followed by the byte id - 255
  PREFIX-token.index.npy.gz  gzip of a .npy integer array of N+1 offsets into the decompressed stream: image i is
                             bytes [index[i], index[i+1]) (their loader finds it by replacing data.bin by index.npy)
  PREFIX-label.txt           one integer class per line

and once per release: codebook.ckpt (the (K, D) codebook as a bare tensor: their loader calls
`torch.load(path).cpu()` on it) and codebook-synonyms.json ({"id": [similar ids, most similar first]}; their
first README calls it synonyms.json, so both names are read).

Choices of ours:
- Ids stop at 509 (at most 510 codes), not 510: their decoder takes every byte 255 as an escape, also one right
  after an escape, so the pair 255 255 cannot mean id 510. Export refuses bigger codebooks.
- The format stores no grid (their loader takes a square of sqrt(tokens) and insists on 1024 tokens, so their
  stock loader only reads 32x32 grids). We write PREFIX-token.grid.json ({"grid": [h, w]}) beside each split,
  which their loader ignores. Reading takes --grid if given, else that file, else a square grid.
- Reading is strict: the index must start at 0, increase and end exactly at the stream's end; every image must
  decode to h*w ids below the codebook size; there must be one label per image.
- The codebook checkpoint is read with torch.load(weights_only=True) (never unpickling arbitrary objects) and
  must be a tensor or a dict of tensors; we also write codebook.safetensors, which is read first when present.

Export writes PREFIX = NAME-train and NAME-val from our train.parquet and test.parquet. Import writes our token
layout: train.parquet and test.parquet (keys train_000042, ...), codebook.safetensors, tokenizer.json,
synonyms.json when the release has synonyms, and stats.json (grid, codes, counts, bytes per image as our
parquet and as SeiT's gzip files, wall_s).
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
    from tokenforge.data.seit import _need, export_tokens, import_release

    if args.action == "export":
        _need(args, "tokens", "tokenizer")
        result = export_tokens(args.tokens, args.tokenizer, args.synonyms, args.out, args.name or "tokenforge")
        tracker.log_metrics({"bytes_per_image_seit": result["seit_bytes_per_image"]})
    else:
        _need(args, "src")
        stats = import_release(args.src, args.out, args.grid, args.name, args.synonyms_k)
        tracker.log_metrics({f"bytes_per_image_{k}": float(v) for k, v in stats["bytes_per_image"].items()})
        tracker.log_artifact(args.out / "stats.json")
        result = stats
    tracker.log_metrics({f"images_{k}": v for k, v in result["counts"].items()})
