"""A SeiT release's files (the format: tokenforge/data/seit.py), read and written: one split's token stream,
index, labels and grid file, and the release's codebook and synonyms.

Writing checks everything before the first file is written and makes each file appear atomically; the gzip
files have no name and mtime 0 in their headers, so the same ids give the same bytes. Reading is strict (see
the module docstring of tokenforge/data/seit.py): every problem is a one-line TokenforgeError naming the file.
A split is read whole (`read_seit`, ids as int64) or opened and read a chunk of images at a time
(`open_split(...).chunks(n)`: memory holds n images' ids, whatever the split's size).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from tokenforge.data.seit_codec import CHUNK, ESCAPE, MAX_CODES, check_offsets, decode_stream, encode_ids, square_grid
from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_file, read_json, require_dir, require_file, write_json

SYNONYM_FILES = ("codebook-synonyms.json", "synonyms.json")


@dataclass
class SeitSet:
    """One split of a SeiT release: ids[i] is the (h, w) grid of image i of class labels[i]."""

    ids: np.ndarray  # int64 (N, h, w)
    labels: np.ndarray  # int64 (N,)
    codebook: np.ndarray | None  # float32 (K, D)
    synonyms: dict[int, list[int]] | None


def split_paths(directory: Path, prefix: str) -> dict[str, Path]:
    """The files of split `prefix` in `directory`: data, index, labels and our grid file."""
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
    paths = split_paths(out_dir, prefix)
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

    The grid is `grid` if given, else the PREFIX-token.grid.json we write, else a square (SeiT's assumption). This
    holds the split as int64; `open_split(...).chunks(n)` reads it n images at a time (what `seit import` does).
    """
    split = open_split(directory, prefix, grid)
    ids = np.empty((len(split), *split.grid), dtype=np.int64)
    for first, chunk in split.chunks(CHUNK):
        ids[first : first + len(chunk)] = chunk
    directory = Path(directory)
    codebook, codebook_path = read_codebook(directory)
    if codebook is not None and ids.size and ids.max() >= len(codebook):
        raise TokenforgeError(out_of_range(split, int(ids.max()), len(codebook), codebook_path))
    return SeitSet(ids, split.labels, codebook, read_synonyms(directory, None if codebook is None else len(codebook)))


def out_of_range(split: "SeitSplit", largest: int, num_codes: int, codebook_path: Path) -> str:
    """The error of a split whose largest id is `largest` but the codebook has `num_codes` codes."""
    return f"{split.paths['data']}: id {largest} out of range for the {num_codes}-code codebook in {codebook_path.name}"


@dataclass
class SeitSplit:
    """One split of a release, opened: its index, labels and grid read and checked; the ids are read by `chunks`."""

    paths: dict[str, Path]
    offsets: np.ndarray  # int64 (N+1,): image i is bytes [offsets[i], offsets[i+1]) of the decompressed stream
    labels: np.ndarray  # int64 (N,)
    grid: tuple[int, int]

    def __len__(self) -> int:
        return len(self.labels)

    def chunks(self, images: int) -> Iterator[tuple[int, np.ndarray]]:
        """(number of its first image, int64 ids (n, h, w)) for runs of at most `images` images, in order, read from
        the gzip stream one run at a time: memory holds a run, not the split. After the last run the stream must end
        where the index does."""
        if images < 1:
            raise TokenforgeError(f"chunk: {images} images; must be at least 1")
        source, data = str(self.paths["data"]), self.paths["data"]
        with gzip.open(data, "rb") as stream:
            for a in range(0, len(self), images):
                b = min(a + images, len(self))
                start, need = int(self.offsets[a]), int(self.offsets[b] - self.offsets[a])
                piece = _read(stream, need, data)
                if len(piece) < need:  # the stream ends inside this run: the error names the first image cut short
                    check_offsets(self.offsets, start + len(piece), source)
                yield a, decode_stream(piece, self.offsets[a : b + 1] - start, self.grid, source, first=a)
            check_offsets(self.offsets, int(self.offsets[-1]) + _drain(stream, data), source)  # no bytes left over


def open_split(directory: str | Path, prefix: str, grid: tuple[int, int] | None = None) -> SeitSplit:
    """Split `prefix` of the release in `directory`, opened for `chunks`; the grid as `read_seit` resolves it.

    With several problems, the first named is the one a whole read names first: a broken gzip stream, a bad index,
    an index that does not end where the stream does, then the labels and the grid."""
    directory = require_dir(directory, "SeiT release directory")
    paths = split_paths(directory, prefix)
    data = require_file(paths["data"], "SeiT token file")
    offsets = None
    try:
        offsets = _read_index(require_file(paths["index"], "SeiT index file"))
        with gzip.open(data, "rb") as stream:
            head = _read(stream, int(offsets[1]) if len(offsets) > 1 else 0, data)  # the first image's bytes
        if len(offsets) > 1 and len(head) < offsets[1]:
            check_offsets(offsets, len(head), str(data))  # the stream ends inside image 0
        labels = _read_labels(require_file(paths["labels"], "SeiT label file"), len(offsets) - 1, paths["index"])
        grid = _resolve_grid(grid, paths["grid"], head, offsets[:2], str(data))
    except TokenforgeError:
        with gzip.open(data, "rb") as stream:
            length = _drain(stream, data)  # a broken stream first
        if offsets is not None:
            check_offsets(offsets, length, str(data))  # then an index that does not end where the stream does
        raise
    return SeitSplit(paths, offsets, labels, grid)


def _read(stream: gzip.GzipFile, size: int, path: Path) -> bytes:
    """Up to `size` decompressed bytes (fewer only at the end); a broken gzip file is a one-line error."""
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise TokenforgeError(f"{path}: not a complete gzip file ({exc})") from None


def _drain(stream: gzip.GzipFile, path: Path) -> int:
    """Read the stream to its end (which checks the gzip trailer); the number of bytes read."""
    count = 0
    while piece := _read(stream, 1 << 24, path):
        count += len(piece)
    return count


def _read_index(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            offsets = np.load(f, allow_pickle=False)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise TokenforgeError(f"{path}: not a gzipped .npy index ({exc})") from None
    return check_offsets(offsets, None, str(path))  # the end against the stream's length: open_split, chunks


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


def _resolve_grid(grid, grid_path: Path, head: bytes, offsets: np.ndarray, source: str) -> tuple[int, int]:
    """--grid, else the grid file, else a square from the first image (`head`, offsets[:2] into it)."""
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
    return square_grid(head, offsets, source)


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
