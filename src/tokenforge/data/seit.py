"""SeiT's released token format, read and written: a SeiT token release becomes a token set, ours a release
(the stage: tokenforge/cli/seit.py).

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
import contextlib
import gzip
import io
import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.io import (
    atomic_dir,
    atomic_file,
    read_json,
    require_dir,
    require_file,
    write_json,
)
from tokenforge.runtime import progress

ESCAPE = 255
MAX_ID = 509  # 254 + 255: the largest id their decoder reads back (see the module docstring)
MAX_CODES = MAX_ID + 1
CHUNK = 65536  # images encoded or decoded at once: bounds the int64 temporaries to ~0.5 GB at 32x32
SPLITS = (("train", "train"), ("test", "val"))  # (ours, SeiT's)
SYNONYM_FILES = ("codebook-synonyms.json", "synonyms.json")


@dataclass
class SeitSet:
    """One split of a SeiT release: ids[i] is the (h, w) grid of image i of class labels[i]."""

    ids: np.ndarray  # int64 (N, h, w)
    labels: np.ndarray  # int64 (N,)
    codebook: np.ndarray | None  # float32 (K, D)
    synonyms: dict[int, list[int]] | None




# ---------------------------------------------------------------------------------------------- byte format


def encode_ids(ids: np.ndarray) -> bytes:
    """SeiT bytes of `ids` in order: one byte below 255, else 255 then id - 255. Ids outside 0..509 are refused."""
    flat = np.asarray(ids).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise TokenforgeError(f"ids: expected integers, got {flat.dtype}")
    if flat.size and (flat.min() < 0 or flat.max() > MAX_ID):
        bad = int(flat[(flat < 0) | (flat > MAX_ID)][0])
        raise TokenforgeError(f"ids: id {bad} does not fit SeiT's byte format (ids 0..{MAX_ID})")
    flat = flat.astype(np.int64)
    big = flat >= ESCAPE
    last = np.arange(flat.size) + np.cumsum(big)  # where each id's last (or only) byte lands
    out = np.empty(flat.size + int(big.sum()), dtype=np.uint8)
    out[last] = np.where(big, flat - ESCAPE, flat)
    out[last[big] - 1] = ESCAPE
    return out.tobytes()


def decode_stream(data: bytes, offsets: np.ndarray, grid: tuple[int, int], source: str) -> np.ndarray:
    """(N, h, w) int64 ids of the N images of a decompressed SeiT stream; image i is data[offsets[i]:offsets[i+1]].

    Vectorised over chunks of images; a bad index, a truncated image or a wrong grid raises naming `source`.
    """
    offsets = check_offsets(offsets, len(data), source)
    h, w = (int(s) for s in grid)
    n = len(offsets) - 1
    stream = np.frombuffer(data, dtype=np.uint8)
    out = np.empty((n, h * w), dtype=np.int64)
    starts = range(0, n, CHUNK)
    for a in progress(starts, desc="decode") if len(starts) > 1 else starts:
        b = min(a + CHUNK, n)
        ids, counts = _decode_chunk(stream[offsets[a] : offsets[b]], offsets[a + 1 : b + 1] - offsets[a], source, a)
        wrong = np.flatnonzero(counts != h * w)
        if wrong.size:
            i = int(wrong[0])
            raise TokenforgeError(
                f"{source}: image {a + i} has {int(counts[i])} tokens but the grid {h}x{w} needs {h * w}"
            )
        out[a:b] = ids.reshape(b - a, h * w)
    return out.reshape(n, h, w)


def _decode_chunk(seg: np.ndarray, ends: np.ndarray, source: str, first: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, tokens per image) of the images whose bytes are `seg`, image j ending at byte ends[j] of it."""
    escapes = np.flatnonzero(seg == ESCAPE)
    image_end = np.zeros(len(seg), dtype=bool)
    image_end[ends - 1] = True
    cut = escapes[image_end[escapes]]
    if cut.size:
        image = first + int(np.searchsorted(ends, cut[0], side="right"))
        raise TokenforgeError(f"{source}: image {image} ends in an escape byte 255 (truncated stream)")
    double = escapes[seg[escapes + 1] == ESCAPE]  # escapes + 1 stays inside: no escape ends an image
    if double.size:
        image = first + int(np.searchsorted(ends, double[0], side="right"))
        raise TokenforgeError(f"{source}: image {image} has the bytes 255 255, which no SeiT id encodes")
    values = seg.astype(np.int64)
    values[escapes + 1] += ESCAPE
    keep = np.ones(len(seg), dtype=bool)
    keep[escapes] = False
    tokens_before = np.concatenate([[0], np.cumsum(keep)])
    counts = np.diff(tokens_before[np.concatenate([[0], ends])])
    return values[keep], counts


def check_offsets(offsets: np.ndarray, length: int | None, source: str) -> np.ndarray:
    """`offsets` as int64 if it is a SeiT index: 1-D, from 0, increasing, and ending at `length` (unless None)."""
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or len(offsets) == 0 or not np.issubdtype(offsets.dtype, np.integer):
        raise TokenforgeError(
            f"{source}: index must be a 1-D integer array of N+1 offsets, got {offsets.dtype} {offsets.shape}"
        )
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0:
        raise TokenforgeError(f"{source}: index must start at 0, starts at {int(offsets[0])}")
    steps = np.flatnonzero(np.diff(offsets) <= 0)
    if steps.size:
        i = int(steps[0])
        raise TokenforgeError(
            f"{source}: index not increasing at entry {i + 1} ({int(offsets[i])} then {int(offsets[i + 1])})"
        )
    if length is not None and offsets[-1] > length:
        image = int(np.searchsorted(offsets, length, side="right")) - 1
        raise TokenforgeError(
            f"{source}: truncated stream: image {image} runs past its end ({length} bytes, index ends at "
            f"{int(offsets[-1])})"
        )
    if length is not None and offsets[-1] < length:
        raise TokenforgeError(f"{source}: index ends at byte {int(offsets[-1])} of a {length}-byte stream")
    return offsets


def square_grid(data: bytes, offsets: np.ndarray, source: str) -> tuple[int, int]:
    """The square grid SeiT's loader assumes, from the first image's token count."""
    if len(offsets) < 2:
        raise TokenforgeError(f"{source}: no images, so no grid to derive; pass --grid H W")
    first = np.frombuffer(data, dtype=np.uint8)[int(offsets[0]) : int(offsets[1])]
    count = int((first != ESCAPE).sum())
    side = math.isqrt(count)
    if side * side != count:
        raise TokenforgeError(f"{source}: image 0 has {count} tokens, not a square grid; pass --grid H W")
    return side, side


# ---------------------------------------------------------------------------------------------- files


def _paths(directory: Path, prefix: str) -> dict[str, Path]:
    return {
        "data": directory / f"{prefix}-token.data.bin.gz",
        "index": directory / f"{prefix}-token.index.npy.gz",
        "labels": directory / f"{prefix}-label.txt",
        "grid": directory / f"{prefix}-token.grid.json",
    }


def write_seit(
    out_dir: str | Path,
    prefix: str,
    ids: np.ndarray,
    labels: np.ndarray,
    codebook: np.ndarray | None,
    synonyms: dict[int, list[int]] | None,
) -> None:
    """Write split `prefix` (and the codebook and synonyms when given) into `out_dir` in SeiT's layout.

    Everything is checked before the first file is written, and each file appears atomically.
    """
    out_dir = Path(out_dir)
    ids, labels, num_codes = _check_split(ids, labels, codebook)
    if synonyms is not None:
        check_synonyms(synonyms, num_codes, "synonyms")
    paths = _paths(out_dir, prefix)
    out_dir.mkdir(parents=True, exist_ok=True)
    lengths = []
    with atomic_file(paths["data"]) as tmp, _gzip_writer(tmp) as gz:
        for a in range(0, len(ids), CHUNK):
            chunk = ids[a : a + CHUNK].reshape(len(ids[a : a + CHUNK]), -1)
            gz.write(encode_ids(chunk))
            lengths.append(chunk.shape[1] + (chunk >= ESCAPE).sum(axis=1))
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths) if lengths else [])]).astype(np.int64)
    with atomic_file(paths["index"]) as tmp, _gzip_writer(tmp) as gz:
        np.save(gz, offsets)
    with atomic_file(paths["labels"]) as tmp:
        tmp.write_text("".join(f"{int(label)}\n" for label in labels))
    write_json(paths["grid"], {"grid": list(ids.shape[1:])})
    if codebook is not None:
        write_codebook(out_dir, codebook)
    if synonyms is not None:
        with atomic_file(out_dir / SYNONYM_FILES[0]) as tmp:
            tmp.write_text(synonyms_text(synonyms))


def _check_split(ids, labels, codebook) -> tuple[np.ndarray, np.ndarray, int | None]:
    ids = np.asarray(ids)
    labels = np.asarray(labels)
    if ids.ndim != 3 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise TokenforgeError(f"ids: expected an integer (N, h, w) array, got {ids.dtype} {ids.shape}")
    if labels.shape != (len(ids),):
        raise TokenforgeError(f"labels: {labels.shape[0] if labels.ndim else 0} labels for {len(ids)} images")
    num_codes = None
    if codebook is not None:
        codebook = np.asarray(codebook)
        if codebook.ndim != 2:
            raise TokenforgeError(f"codebook: expected a (codes, dim) matrix, got shape {codebook.shape}")
        num_codes = len(codebook)
        if num_codes > MAX_CODES:
            raise TokenforgeError(f"codebook: {num_codes} codes; SeiT's byte format holds at most {MAX_CODES}")
    limit = num_codes if num_codes is not None else MAX_CODES
    if ids.size and (ids.min() < 0 or ids.max() >= limit):
        raise TokenforgeError(f"ids: values must lie in [0, {limit}), got {int(ids.min())}..{int(ids.max())}")
    return ids, labels, num_codes


@contextlib.contextmanager
def _gzip_writer(path: Path) -> Iterator[gzip.GzipFile]:
    """A gzip stream into `path`; no file name and mtime 0 in the header, so the same ids give the same bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        yield gz


def write_codebook(out_dir: Path, codebook: np.ndarray) -> None:
    """codebook.ckpt (a bare tensor, what SeiT's torch.load(path).cpu() expects) and codebook.safetensors."""
    import torch
    from safetensors.torch import save_file

    tensor = torch.from_numpy(np.ascontiguousarray(codebook, dtype=np.float32)).clone()
    buffer = io.BytesIO()
    torch.save(tensor, buffer)  # through memory: torch names the archive's records after a file's (random) name
    with atomic_file(out_dir / "codebook.ckpt") as tmp:
        tmp.write_bytes(buffer.getvalue())
    with atomic_file(out_dir / "codebook.safetensors") as tmp:
        save_file({"codebook": tensor}, str(tmp))


def synonyms_text(synonyms: dict[int, list[int]]) -> str:
    """JSON {"0": [...], ...}, keys in numeric order, one code per line (the layout `tokenforge synonyms` writes)."""
    lines = [f"  {json.dumps(str(k))}: {json.dumps([int(j) for j in synonyms[k]])}" for k in sorted(synonyms)]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def read_seit(directory: str | Path, prefix: str, grid: tuple[int, int] | None = None) -> SeitSet:
    """Split `prefix` of the SeiT release in `directory`, with its codebook and synonyms when present.

    The grid is `grid` if given, else the PREFIX-token.grid.json we write, else a square (SeiT's assumption).
    """
    directory = require_dir(directory, "SeiT release directory")
    paths = _paths(directory, prefix)
    data = _gunzip(require_file(paths["data"], "SeiT token file"))
    offsets = _read_index(require_file(paths["index"], "SeiT index file"))
    check_offsets(offsets, len(data), str(paths["data"]))  # a truncated stream first, before guessing a grid from it
    labels = _read_labels(require_file(paths["labels"], "SeiT label file"), len(offsets) - 1, paths["index"])
    grid = _resolve_grid(grid, paths["grid"], data, offsets, str(paths["data"]))
    ids = decode_stream(data, offsets, grid, str(paths["data"]))
    codebook, codebook_path = read_codebook(directory)
    if codebook is not None and ids.size and ids.max() >= len(codebook):
        raise TokenforgeError(f"{paths['data']}: id {int(ids.max())} out of range for the {len(codebook)}-code "
                              f"codebook in {codebook_path.name}")
    return SeitSet(ids, labels, codebook, read_synonyms(directory, None if codebook is None else len(codebook)))


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise TokenforgeError(f"{path}: not a complete gzip file ({exc})") from None


def _read_index(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            offsets = np.load(f, allow_pickle=False)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise TokenforgeError(f"{path}: not a gzipped .npy index ({exc})") from None
    return check_offsets(offsets, None, str(path))  # the end against the stream's length: read_seit checks


def _read_labels(path: Path, count: int, index: Path) -> np.ndarray:
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise TokenforgeError(f"{path}: not a text file of labels") from None
    try:
        labels = np.array([int(line.strip()) for line in lines], dtype=np.int64)
    except ValueError:
        bad = next(i for i, line in enumerate(lines) if not line.strip().lstrip("-").isdigit())
        raise TokenforgeError(f"{path}: line {bad + 1} is not an integer label ({lines[bad]!r})") from None
    if len(labels) != count:
        raise TokenforgeError(f"{path}: {len(labels)} labels for the {count} images of {index.name}")
    if labels.size and labels.min() < 0:
        raise TokenforgeError(f"{path}: negative label {int(labels.min())}")
    return labels


def _resolve_grid(grid, grid_path: Path, data: bytes, offsets: np.ndarray, source: str) -> tuple[int, int]:
    if grid is not None:
        if len(grid) != 2 or min(grid) < 1:
            raise TokenforgeError(f"--grid {' '.join(map(str, grid))}: needs two positive sizes H W")
        return int(grid[0]), int(grid[1])
    if grid_path.is_file():
        value = read_json(grid_path)
        grid = value.get("grid") if isinstance(value, dict) else None
        if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(s, int) and s > 0 for s in grid)):
            raise TokenforgeError(f"{grid_path}: expected {{\"grid\": [h, w]}}, got {value!r}")
        return grid[0], grid[1]
    return square_grid(data, offsets, source)


def read_codebook(directory: Path) -> tuple[np.ndarray | None, Path | None]:
    """((K, D) float32 codebook, its file) from codebook.safetensors or codebook.ckpt, or (None, None)."""
    st, ckpt = directory / "codebook.safetensors", directory / "codebook.ckpt"
    if st.is_file():
        return _codebook_from_safetensors(st), st
    if ckpt.is_file():
        return _codebook_from_checkpoint(ckpt), ckpt
    return None, None


def _codebook_from_safetensors(path: Path) -> np.ndarray:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise TokenforgeError(f"{path}: not a readable safetensors file ({exc})") from None
    return _pick_codebook(tensors, path)


def _codebook_from_checkpoint(path: Path) -> np.ndarray:
    import torch

    try:
        # weights_only: only tensors and plain containers are rebuilt; any other pickled object is refused.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (UnpicklingError, RuntimeError, EOFError, ...) for bad files
        reason = " ".join(str(exc).split())[:200]
        raise TokenforgeError(f"{path}: not a weights-only torch checkpoint ({reason})") from None
    if isinstance(obj, torch.Tensor):
        obj = {"codebook": obj}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TokenforgeError(f"{path}: expected a codebook tensor or a dict of tensors, got {type(obj).__name__}")
    return _pick_codebook({str(k): v.detach().float().numpy() for k, v in obj.items()}, path)


def _pick_codebook(tensors: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """The "codebook" entry, else the only 2-D one, as a finite float32 (K, D) array."""
    if "codebook" in tensors:
        codebook = tensors["codebook"]
    else:
        matrices = [v for v in tensors.values() if v.ndim == 2]
        if len(matrices) != 1:
            raise TokenforgeError(f"{path}: no 'codebook' entry and {len(matrices)} 2-D tensors; cannot tell which "
                                  "is the codebook")
        codebook = matrices[0]
    codebook = np.asarray(codebook, dtype=np.float32)
    if codebook.ndim != 2 or not len(codebook) or not np.isfinite(codebook).all():
        raise TokenforgeError(f"{path}: codebook must be a finite (codes, dim) matrix, got shape {codebook.shape}")
    return codebook


def read_synonyms(directory: Path, num_codes: int | None) -> dict[int, list[int]] | None:
    """The release's synonyms (codebook-synonyms.json, else synonyms.json), or None when it has none."""
    for name in SYNONYM_FILES:
        if (directory / name).is_file():
            return read_synonyms_file(directory / name, num_codes)
    return None


def read_synonyms_file(path: Path, num_codes: int | None) -> dict[int, list[int]]:
    """{id: [similar ids]} from a SeiT/`tokenforge synonyms` JSON file, every id checked against the codebook."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise TokenforgeError(f"{path}: expected an object {{\"id\": [ids]}}")
    synonyms = {}
    for key, value in raw.items():
        if not key.isdigit() or not isinstance(value, list) or not all(type(v) is int for v in value):
            raise TokenforgeError(f"{path}: entry {key!r} must map a code id to a list of ids")
        synonyms[int(key)] = value
    check_synonyms(synonyms, num_codes, str(path))
    return dict(sorted(synonyms.items()))


def check_synonyms(synonyms: dict[int, list[int]], num_codes: int | None, source: str) -> None:
    limit = num_codes if num_codes is not None else MAX_CODES
    for key, value in synonyms.items():
        if not 0 <= int(key) < limit or any(not 0 <= int(v) < limit for v in value):
            raise TokenforgeError(f"{source}: code {key} or one of its synonyms is outside [0, {limit})")


# ---------------------------------------------------------------------------------------------- stage


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
    src: Path, out: Path, grid: tuple[int, int] | None, name: str | None, synonyms_k: int = 5
) -> dict:
    """Write SeiT release `src` as our token layout into `out` (see the module docstring); returns stats."""
    from safetensors.numpy import save_file

    from tokenforge.data.tokens import TokenSet, save_tokens

    start = time.perf_counter()
    src = require_dir(src, "SeiT release directory")
    name = release_name(src, name)
    sets = {ours: read_seit(src, f"{name}-{theirs}", grid) for ours, theirs in SPLITS}
    train = sets["train"]
    if train.codebook is None:
        raise TokenforgeError(f"{src / 'codebook.ckpt'}: not found; importing needs the release's codebook")
    size, dim = train.codebook.shape
    h, w = train.ids.shape[1:]
    if sets["test"].ids.shape[1:] != (h, w):
        raise TokenforgeError(f"{src / (name + '-val-token.data.bin.gz')}: grid {sets['test'].ids.shape[1:]} "
                              f"differs from the train split's {(h, w)}")
    with atomic_dir(out) as tmp:
        for split, tokens in sets.items():
            width = max(6, len(str(len(tokens.labels) - 1)))
            keys = [f"{split}_{i:0{width}d}" for i in range(len(tokens.labels))]
            save_tokens(tmp / f"{split}.parquet", TokenSet(keys, tokens.labels, tokens.ids), size)
        save_file({"codebook": train.codebook}, str(tmp / "codebook.safetensors"))
        tokenizer = {"grid": [h, w], "codebook_size": size, "code_dim": dim, "source": "seit"}
        write_json(tmp / "tokenizer.json", tokenizer)
        # The pipeline reads this folder as its tokenizer (codebook.safetensors + config.json); a release
        # says nothing of the image tokenizer behind it, so those keys are null.
        unknown = dict.fromkeys(("image_size", "channels", "downsample", "hidden_dim", "seed"))
        write_json(tmp / "config.json", {**unknown, **tokenizer})
        labels = np.concatenate([t.labels for t in sets.values()])
        write_json(tmp / "classes.json", [str(c) for c in range(int(labels.max()) + 1)])
        synonyms = train.synonyms
        if synonyms is None:  # nearest codebook vectors, as `tokenforge synonyms` computes them
            from tokenforge.tokenizer.synonyms import nearest_codes

            synonyms = {i: row.tolist() for i, row in enumerate(nearest_codes(train.codebook, synonyms_k))}
        (tmp / "synonyms.json").write_text(synonyms_text(synonyms))
        counts = {split: len(tokens.labels) for split, tokens in sets.items()}
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


def _seit_bytes(directory: Path, prefix: str) -> int:
    """Bytes of a split's gzip files (ids and index; labels are a text file of their own)."""
    paths = _paths(directory, prefix)
    return paths["data"].stat().st_size + paths["index"].stat().st_size


def _need(args: argparse.Namespace, *options: str) -> None:
    for option in options:
        if getattr(args, option) is None:
            raise TokenforgeError(f"--{option}: required for `tokenforge seit {args.action}`")


