"""SeiT's released token format, read and written: a SeiT token release becomes a token set, ours a release
(the stage: tokenforge/cli/seit.py). This module holds the stage's two actions (`export_tokens`,
`import_release`); the byte code is tokenforge/data/seit_codec.py and a release's files
tokenforge/data/seit_release.py, whose public names are importable from here too.

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
parquet and as SeiT's gzip files, wall_s). Import streams: each split is read, decoded and written a chunk of
images (one parquet row group) at a time, so memory holds a chunk whatever the release's size.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tokenforge.data.seit_codec import ESCAPE, MAX_CODES, MAX_ID, check_offsets, decode_stream, encode_ids, square_grid
from tokenforge.data.seit_release import (
    SYNONYM_FILES,
    SeitSet,
    SeitSplit,
    check_synonyms,
    open_split,
    out_of_range,
    read_codebook,
    read_seit,
    read_synonyms,
    read_synonyms_file,
    split_paths,
    synonyms_text,
    write_codebook,
    write_seit,
)
from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, require_dir, write_json
from tokenforge.runtime import progress

# The byte code and the release files live in seit_codec and seit_release; these names stay importable from here.
__all__ = [
    "ESCAPE", "MAX_CODES", "MAX_ID", "SPLITS", "SYNONYM_FILES", "SeitSet", "SeitSplit", "check_offsets",
    "check_synonyms", "decode_stream", "encode_ids", "export_tokens", "import_release", "open_split", "read_codebook",
    "read_seit", "read_synonyms", "read_synonyms_file", "release_name", "square_grid", "synonyms_text",
    "write_codebook", "write_seit", "write_split",
]  # fmt: skip

SPLITS = (("train", "train"), ("test", "val"))  # (ours, SeiT's)
# `import_release` reads, decodes and packs this many ids at once (1024 images of 32x32): ~8 MiB as int64, ~0.1 GB with
# the decoder's and the packer's temporaries, whatever the split's size (ImageNet-1k's train split as int64: ~10 GB).
DECODE_ELEMENTS = 1 << 20
# ... and writes a row group per this many ids (packed: ~5 MB at 9 bits per id), as `load_tokens` reads a batch;
# groups of 1 << 20 ids made files ~0.2% bigger, of 1 << 18 ~5% (200k synthetic 16x16 images).
GROUP_ELEMENTS = 1 << 22


def export_tokens(tokens: Path, tokenizer: Path, synonyms: Path | None, out: Path, name: str) -> dict:
    """Write our train/test token files as SeiT release NAME (train, val) into `out`; returns counts."""
    from tokenforge.data.tokens import load_tokens
    from tokenforge.tokenizer.vq import load_tokenizer

    model = load_tokenizer(tokenizer)
    codebook = model.codebook.numpy()
    if len(codebook) > MAX_CODES:
        raise TokenforgeError(f"{tokenizer / 'config.json'}: {len(codebook)} codes; SeiT's byte format holds at "
                              f"most {MAX_CODES} (ids 0..{MAX_ID})")
    table = read_synonyms_file(synonyms, len(codebook)) if synonyms is not None else None
    counts = {}
    with atomic_dir(out) as tmp:
        for ours, theirs in SPLITS:
            path = tokens / f"{ours}.parquet"
            split = load_tokens(path)
            if list(split.ids.shape[1:]) != list(model.config["grid"]):
                raise TokenforgeError(f"{path}: token grid {list(split.ids.shape[1:])} does not match the "
                                      f"tokenizer's grid {model.config['grid']}")
            if split.ids.size and split.ids.max() >= len(codebook):
                raise TokenforgeError(f"{path}: id {int(split.ids.max())} out of range for the tokenizer's "
                                      f"{len(codebook)} codes")
            write_seit(tmp, f"{name}-{theirs}", split.ids, split.labels, codebook, table)
            counts[ours] = len(split.labels)
        seit_bytes = sum(_seit_bytes(tmp, f"{name}-{theirs}") for _, theirs in SPLITS)
    return {"counts": counts, "seit_bytes_per_image": seit_bytes / max(sum(counts.values()), 1)}


def release_name(src: Path, name: str | None) -> str:
    """`name`, or the one NAME with a NAME-train-token.data.bin.gz in `src`."""
    if name is not None:
        return name
    suffix = "-train-token.data.bin.gz"
    found = sorted(p.name[: -len(suffix)] for p in src.glob(f"*{suffix}"))
    if len(found) != 1:
        raise TokenforgeError(f"{src}: found {len(found)} releases (*{suffix}: {', '.join(found) or 'none'}); "
                              "pass --name")
    return found[0]


def import_release(
    src: Path, out: Path, grid: tuple[int, int] | None, name: str | None, synonyms_k: int = 5, chunk: int | None = None
) -> dict:
    """Write SeiT release `src` as our token layout into `out` (see the module docstring); returns stats.

    Each split streams into its token file `chunk` images at a time (default: DECODE_ELEMENTS ids' worth), so memory
    holds a chunk, not the split; every split is opened and checked before the first file is written."""
    from safetensors.numpy import save_file

    start = time.perf_counter()
    src = require_dir(src, "SeiT release directory")
    name = release_name(src, name)
    splits = {ours: open_split(src, f"{name}-{theirs}", grid) for ours, theirs in SPLITS}
    codebook, codebook_path = read_codebook(src)
    if codebook is None:
        raise TokenforgeError(f"{src / 'codebook.ckpt'}: not found; importing needs the release's codebook")
    size, dim = codebook.shape
    h, w = splits["train"].grid
    if splits["test"].grid != (h, w):
        raise TokenforgeError(f"{src / (name + '-val-token.data.bin.gz')}: grid {splits['test'].grid} "
                              f"differs from the train split's {(h, w)}")
    synonyms = read_synonyms(src, size)
    chunk = chunk or max(1, DECODE_ELEMENTS // (h * w))
    group = max(chunk, GROUP_ELEMENTS // (h * w))
    with atomic_dir(out) as tmp:
        for split, opened in splits.items():
            write_split(opened, tmp / f"{split}.parquet", split, (size, codebook_path), chunk, group)
        save_file({"codebook": codebook}, str(tmp / "codebook.safetensors"))
        tokenizer = {"grid": [h, w], "codebook_size": size, "code_dim": dim, "source": "seit"}
        write_json(tmp / "tokenizer.json", tokenizer)
        # The pipeline reads this folder as its tokenizer (codebook.safetensors + config.json); a release
        # says nothing of the image tokenizer behind it, so those keys are null.
        unknown = dict.fromkeys(("image_size", "channels", "downsample", "hidden_dim", "seed"))
        write_json(tmp / "config.json", {**unknown, **tokenizer})
        labels = np.concatenate([opened.labels for opened in splits.values()])
        write_json(tmp / "classes.json", [str(c) for c in range(int(labels.max()) + 1)])
        if synonyms is None:  # nearest codebook vectors, as `tokenforge synonyms` computes them
            from tokenforge.tokenizer.synonyms import nearest_codes

            synonyms = {i: row.tolist() for i, row in enumerate(nearest_codes(codebook, synonyms_k))}
        (tmp / "synonyms.json").write_text(synonyms_text(synonyms))
        counts = {split: len(opened) for split, opened in splits.items()}
        images = max(sum(counts.values()), 1)
        stats = {
            "grid": [h, w],
            "num_codes": size,
            "counts": counts,
            "bytes_per_image": {
                "tokens": sum((tmp / f"{s}.parquet").stat().st_size for s in counts) / images,
                "seit": sum(_seit_bytes(src, f"{name}-{theirs}") for _, theirs in SPLITS) / images,
            },
            "wall_s": time.perf_counter() - start,
        }
        write_json(tmp / "stats.json", stats)
    return stats


def write_split(split: SeitSplit, path: Path, name: str, codebook: tuple[int, Path], images: int, group: int) -> None:
    """Stream `split` into the token file `path` (keys NAME_000042, ...): `images` images at a time are read, decoded,
    checked against the codebook (`codebook`: its size and file) and packed; packed chunks are written as one row
    group once they hold `group` images (the last with the rest): a split of up to `group` images gives save_tokens'
    very file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokenforge.data.tokens import PARQUET_OPTIONS, TokenSet, tokens_table

    num_codes, codebook_path = codebook
    width = max(6, len(str(len(split) - 1)))
    chunks, tables, writer = split.chunks(images), [], None
    try:
        for first, ids in progress(chunks, desc=f"import {name}", total=-(-len(split) // images), unit="chunk"):
            if ids.size and ids.max() >= num_codes:  # the error names the split's largest id, as a whole read would
                largest = max([int(ids.max())] + [int(rest.max()) for _, rest in chunks if rest.size])
                raise TokenforgeError(out_of_range(split, largest, num_codes, codebook_path))
            keys = [f"{name}_{i:0{width}d}" for i in range(first, first + len(ids))]
            tables.append(tokens_table(TokenSet(keys, split.labels[first : first + len(ids)], ids), num_codes))
            if sum(t.num_rows for t in tables) >= group or first + len(ids) == len(split):
                table = pa.concat_tables(tables).combine_chunks()
                writer = writer or pq.ParquetWriter(path, table.schema, **PARQUET_OPTIONS)
                writer.write_table(table)
                tables = []
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no images: an empty file of the same schema
        empty = TokenSet([], np.zeros(0, np.int64), np.zeros((0, *split.grid), np.int64))
        pq.write_table(tokens_table(empty, num_codes), path, **PARQUET_OPTIONS)


def _seit_bytes(directory: Path, prefix: str) -> int:
    """Bytes of a split's gzip files (ids and index; labels are a text file of their own)."""
    paths = split_paths(directory, prefix)
    return paths["data"].stat().st_size + paths["index"].stat().st_size


def need_options(args: argparse.Namespace, *options: str) -> None:
    """The options `tokenforge seit ACTION` needs: argparse cannot make an option required for one action only."""
    for option in options:
        if getattr(args, option) is None:
            raise TokenforgeError(f"--{option}: required for `tokenforge seit {args.action}`")


