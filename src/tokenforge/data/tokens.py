"""The token file format: one Parquet file per split, one row per image (key, label, ids).

`ids` holds each image's grid row-major as a fixed-size binary of ceil(h*w*bits/8) bytes, where
bits = max(1, ceil(log2(num_codes))) for the (pruned) codebook: token i fills bits i*bits .. (i+1)*bits-1 of
a little-endian bit stream (bit j of the stream is bit j%8 of byte j//8; lowest bit of an id first). The
schema metadata holds grid (b"h,w"), num_codes and bits. `save_tokens` writes a `TokenSet`; `load_tokens(path)`
reads one back, also in the earlier layout (ids as a fixed-size list of uint8/uint16), record batch by record batch:
given `labels` only those classes' rows, with `narrow=True` ids as uint8/uint16 (`narrow_dtype`), so a job holds what
it uses and not the split as int64; `iter_tokens(path, batch_rows)` streams it in batches. The `tokenize` stage
(tokenforge/cli/tokenize.py) writes these files with `tokenforge.tokenizer.encode`.

Images of a text-bearing source (tokenforge/data/multimodal.py) add a `text` column (string): each image's
text record as `json.dumps(record, sort_keys=True)`, read back as `TokenSet.texts`. Files without text have no
such column (and are byte-identical to files written before it existed); `texts` is then None.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenforge.errors import TokenforgeError
from tokenforge.io import require_file

SPLITS = ("train", "test")
COLUMNS = ("key", "label", "ids")
TEXT_COLUMN = "text"  # optional: only in files of text-bearing sources
MAX_BITS = 16  # ids up to 65535: the tokenizer's MAX_CODES
# Rows packed or unpacked at once: bounds the temporary arrays (rows x tokens x bits bytes) to ~64 MiB.
CHUNK_ELEMENTS = 1 << 26
# Ids decoded at once while reading (one record batch): 8 MiB as int64 whatever the grid; 4x more read no faster
# on 200k 16x16 grids and took ~100 MiB more at the peak.
READ_ELEMENTS = 1 << 20
READ_BUFFER = 1 << 20  # bytes of a column read at once
# Parquet settings, chosen on measurements: benchmarks/results/token_parquet.md.
ZSTD_LEVEL = 19
PARQUET_OPTIONS = dict(
    compression="zstd",
    compression_level=ZSTD_LEVEL,
    use_dictionary=["label"],
    write_statistics=["key", "label"],
    column_encoding={"key": "DELTA_BYTE_ARRAY"},
)


@dataclass
class TokenSet:
    """A split as code ids: ids[i] is the (h, w) grid of image keys[i], whose class is labels[i]."""

    keys: list[str]
    labels: np.ndarray  # int64 (N,)
    ids: np.ndarray  # int64 (N, h, w)
    texts: list[dict] | None = None  # per-image text record (multimodal sources), else None


# ---------------------------------------------------------------------------------------------- bit packing


def id_bits(num_codes: int) -> int:
    """Bits per id for ids 0..num_codes-1: max(1, ceil(log2(num_codes))), e.g. 64 -> 6, 391 -> 9."""
    if not 1 <= num_codes <= 1 << MAX_BITS:
        raise TokenforgeError(f"num_codes {num_codes}: must be between 1 and {1 << MAX_BITS}")
    return max(1, (int(num_codes) - 1).bit_length())


def packed_size(num_tokens: int, bits: int) -> int:
    """Bytes of one image's packed ids: ceil(num_tokens * bits / 8)."""
    return (num_tokens * bits + 7) // 8


def _row_blocks(rows: int, per_row: int):
    """Slices of at most ~CHUNK_ELEMENTS / per_row rows covering 0..rows-1."""
    step = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    return (slice(i, min(i + step, rows)) for i in range(0, rows, step))


def pack_ids(ids: np.ndarray, bits: int) -> np.ndarray:
    """uint8 (N, ceil(T*bits/8)): each row the little-endian bit stream of one row of int ids (N, T) < 2**bits."""
    ids = np.asarray(ids)
    n, t = ids.shape
    out = np.empty((n, packed_size(t, bits)), dtype=np.uint8)
    weights = np.arange(bits, dtype=np.int64)
    for rows in _row_blocks(n, t * bits * 8):  # the bit planes are int64 before they become uint8: 8 bytes each
        block = ids[rows].astype(np.int64)
        # (rows, T, bits) bit planes, lowest bit first, flattened token after token: the stream's bit order.
        planes = ((block[:, :, None] >> weights) & 1).astype(np.uint8).reshape(len(block), t * bits)
        out[rows] = np.packbits(planes, axis=1, bitorder="little")
    return out


def unpack_ids(packed: np.ndarray, num_tokens: int, bits: int) -> np.ndarray:
    """int64 (N, num_tokens) ids from the rows of `pack_ids` (uint8 (N, ceil(num_tokens*bits/8)))."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    n, nbytes = packed.shape
    if bits == 8:
        return packed.astype(np.int64)
    if bits == 16:
        return packed.view("<u2").astype(np.int64)
    start = np.arange(num_tokens, dtype=np.int64) * bits
    first, shift = start >> 3, (start & 7).astype(np.uint32)
    # An id spans at most 3 bytes (7 + 16 bits). Gathers past the end are clamped to the last byte: they
    # land above the id's highest bit and the mask drops them.
    spans = int((int(shift.max(initial=0)) + bits + 7) >> 3)
    out = np.empty((n, num_tokens), dtype=np.int64)
    for rows in _row_blocks(n, num_tokens * spans):
        word = np.zeros((rows.stop - rows.start, num_tokens), dtype=np.uint32)
        for k in range(spans):
            word |= packed[rows, np.minimum(first + k, nbytes - 1)].astype(np.uint32) << np.uint32(8 * k)
        out[rows] = (word >> shift) & np.uint32((1 << bits) - 1)
    return out


# ---------------------------------------------------------------------------------------------- files


def tokens_table(tokens: TokenSet, num_codes: int) -> pa.Table:
    """The parquet layout of `tokens`: key, label int32, ids fixed-size binary (packed), [text], + metadata."""
    ids = np.asarray(tokens.ids)
    if ids.ndim != 3:
        raise TokenforgeError(f"ids: expected (N, h, w) token grids, got shape {ids.shape}")
    n, h, w = ids.shape
    bits = id_bits(num_codes)
    if n and (ids.min() < 0 or ids.max() >= num_codes):
        raise TokenforgeError(f"ids: values must lie in [0, {num_codes})")
    if len(tokens.keys) != n or len(tokens.labels) != n:
        raise TokenforgeError(f"tokens: {len(tokens.keys)} keys and {len(tokens.labels)} labels for {n} grids")
    if tokens.texts is not None and len(tokens.texts) != n:
        raise TokenforgeError(f"tokens: {len(tokens.texts)} text records for {n} grids")
    packed = pack_ids(ids.reshape(n, h * w), bits)
    kind = pa.binary(packed.shape[1])
    columns = {
        "key": pa.array(tokens.keys, type=pa.string()),
        "label": pa.array(np.asarray(tokens.labels, dtype=np.int32), type=pa.int32()),
        "ids": pa.FixedSizeBinaryArray.from_buffers(kind, n, [None, pa.py_buffer(packed.tobytes())]),
    }
    if tokens.texts is not None:
        records = [json.dumps(record, sort_keys=True) for record in tokens.texts]
        columns[TEXT_COLUMN] = pa.array(records, type=pa.string())
    table = pa.table(columns)
    meta = {b"grid": f"{h},{w}".encode(), b"num_codes": str(num_codes).encode(), b"bits": str(bits).encode()}
    return table.replace_schema_metadata(meta)


def save_tokens(path: Path, tokens: TokenSet, num_codes: int) -> None:
    """Write `tokens` as a parquet file at `path` with the measured settings (the caller makes it atomic)."""
    pq.write_table(tokens_table(tokens, num_codes), path, **PARQUET_OPTIONS)


def narrow_dtype(num_codes: int) -> np.dtype:
    """The narrowest unsigned type of ids 0..num_codes-1: uint8 up to 256 codes, uint16 above (MAX_BITS)."""
    return np.dtype(np.uint8) if num_codes <= 1 << 8 else np.dtype(np.uint16)


@dataclass(frozen=True)
class TokenFile:
    """A token file opened for batch reads, its layout checked: grid, codebook size and bits per packed id (None: the
    earlier list layout). `open` raises the one-line errors of a missing, unreadable or malformed file."""

    path: Path
    parquet: pq.ParquetFile
    grid: tuple[int, int]
    num_codes: int | None
    bits: int | None
    has_text: bool

    @classmethod
    def open(cls, path: str | Path) -> "TokenFile":
        path = require_file(path, "token file")
        try:  # pages read as they are decoded, not a row group's column chunks at once (~60 MiB less at 200k rows)
            parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
        except (pa.ArrowException, OSError) as exc:
            raise TokenforgeError(f"{path}: not a readable parquet file ({exc})") from None
        schema = parquet.schema_arrow
        missing = [c for c in COLUMNS if c not in schema.names]
        if missing:
            raise TokenforgeError(f"{path}: missing column(s) {', '.join(missing)} in this token file")
        h, w, num_codes = _read_metadata(path, schema)
        kind = schema.field("ids").type
        if pa.types.is_fixed_size_binary(kind):
            bits = _packed_bits(path, schema, kind.byte_width, h * w)
        elif pa.types.is_fixed_size_list(kind) and kind.list_size == h * w:
            bits = None
        else:
            raise TokenforgeError(
                f"{path}: column ids must be packed fixed-size binary or a fixed-size list of {h}*{w} ids, got {kind}"
            )
        return cls(path, parquet, (h, w), num_codes, bits, TEXT_COLUMN in schema.names)

    def ids_dtype(self, narrow: bool) -> np.dtype:
        """int64, or with `narrow` the narrowest type of the codebook (uint16 when an old file does not say)."""
        return narrow_dtype(self.num_codes or 1 << MAX_BITS) if narrow else np.dtype(np.int64)

    def batches(self, columns: list[str]):
        """The file's record batches in file order, each of about READ_ELEMENTS ids."""
        rows = max(1, READ_ELEMENTS // (self.grid[0] * self.grid[1]))
        try:
            yield from self.parquet.iter_batches(batch_size=rows, columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise TokenforgeError(f"{self.path}: not a readable parquet file ({exc})") from None

    def read(self, dtype: np.dtype, keep=None):
        """The rows as TokenSets, one per record batch (only the rows `keep(batch)` marks, when given), in file order."""
        start = 0
        for batch in self.batches([*COLUMNS, TEXT_COLUMN] if self.has_text else list(COLUMNS)):
            rows = batch.num_rows
            if keep is not None:
                batch = batch.filter(pa.array(keep(batch)))
            if batch.num_rows:
                yield _decode(self, batch, dtype, start)
            start += rows

    def count(self, keep) -> int:
        """Rows `keep` marks, from the columns it reads alone."""
        return sum(int(np.count_nonzero(keep(batch))) for batch in self.batches(keep.columns))


def _decode(source: TokenFile, batch: pa.RecordBatch, dtype: np.dtype, start: int) -> TokenSet:
    """A record batch (its first row the file's row `start`) as a TokenSet, ids as `dtype`, checked for the codebook."""
    path, (h, w) = source.path, source.grid
    column = batch.column("ids")
    if column.null_count:
        raise TokenforgeError(f"{path}: column ids has {column.null_count} null row(s)")
    if source.bits is not None:
        ids = _unpack_array(column, h * w, source.bits)
    else:
        ids = column.flatten().to_numpy(zero_copy_only=False)
    ids = ids.reshape(batch.num_rows, h, w)
    limit = source.num_codes or (None if dtype == np.int64 else 1 << MAX_BITS)  # a narrow type holds the ids
    if limit is not None and ids.size and (ids.min() < 0 or ids.max() >= limit):
        raise TokenforgeError(f"{path}: ids out of range for {limit} codes (max {int(ids.max())})")
    labels = batch.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    texts = _read_texts(path, batch.column(TEXT_COLUMN), start) if source.has_text else None
    return TokenSet(batch.column("key").to_pylist(), labels, ids.astype(dtype, copy=False), texts)


def _row_filter(labels, keys):
    """None, or the function marking a record batch's rows whose label is in `labels` and key in `keys` (each if given)."""
    if labels is None and keys is None:
        return None
    wanted = None if labels is None else np.array(sorted({int(c) for c in labels}), dtype=np.int64)
    key_set = None if keys is None else pa.array(sorted(set(keys)), pa.string())

    def keep(batch: pa.RecordBatch) -> np.ndarray:
        mask = np.ones(batch.num_rows, dtype=bool)
        if wanted is not None:
            mask &= np.isin(batch.column("label").to_numpy(zero_copy_only=False), wanted)
        if key_set is not None:
            mask &= pc.is_in(batch.column("key"), value_set=key_set).to_numpy(zero_copy_only=False)
        return mask

    keep.columns = [name for name, given in (("key", keys), ("label", labels)) if given is not None]
    return keep


def load_tokens(path: str | Path, labels=None, keys=None, narrow: bool = False) -> TokenSet:
    """Read a token parquet file written by `tokenforge tokenize` (packed, or the earlier list layout), record batch by
    record batch: only the rows whose label is in `labels` and whose key is in `keys` (each when given), in file order;
    ids as int64, or with `narrow` as `narrow_dtype` of the codebook. Memory: the kept rows and one batch.

    Bad files raise TokenforgeError naming them.
    """
    source = TokenFile.open(path)
    dtype, keep = source.ids_dtype(narrow), _row_filter(labels, keys)
    total = source.parquet.metadata.num_rows if keep is None else source.count(keep)
    out = TokenSet([], np.empty(total, np.int64), np.empty((total, *source.grid), dtype), [] if source.has_text else None)
    for part in source.read(dtype, keep):
        at, n = len(out.keys), len(part.keys)
        if at + n > total:
            raise TokenforgeError(f"{source.path}: the file changed while it was read")
        out.labels[at : at + n], out.ids[at : at + n] = part.labels, part.ids
        out.keys += part.keys
        if out.texts is not None:
            out.texts += part.texts
    if len(out.keys) != total:
        raise TokenforgeError(f"{source.path}: the file changed while it was read")
    return out


def iter_tokens(path: str | Path, batch_rows: int, narrow: bool = False):
    """The file's rows as TokenSets of `batch_rows` rows each (the last one shorter), in file order, ids as in
    `load_tokens`; memory holds about two record batches whatever the file's size. Bad files raise at the call."""
    if batch_rows < 1:
        raise TokenforgeError(f"batch_rows {batch_rows}: must be at least 1")
    source = TokenFile.open(path)
    return _rechunked(source.read(source.ids_dtype(narrow)), batch_rows)


def _rechunked(parts, batch_rows: int):
    pending, count = [], 0
    for part in parts:
        pending.append(part)
        count += len(part.keys)
        if count >= batch_rows:
            whole, full = _joined(pending), count - count % batch_rows
            yield from (_token_rows(whole, slice(i, i + batch_rows)) for i in range(0, full, batch_rows))
            pending, count = [_token_rows(whole, slice(full, count))], count - full
    if count:
        yield _joined(pending)


def _token_rows(tokens: TokenSet, rows: slice) -> TokenSet:
    texts = None if tokens.texts is None else tokens.texts[rows]
    return TokenSet(tokens.keys[rows], tokens.labels[rows], tokens.ids[rows], texts)


def _joined(parts: list[TokenSet]) -> TokenSet:
    if len(parts) == 1:
        return parts[0]
    texts = None if parts[0].texts is None else [t for p in parts for t in p.texts]
    keys = [k for p in parts for k in p.keys]
    return TokenSet(keys, np.concatenate([p.labels for p in parts]), np.concatenate([p.ids for p in parts]), texts)


def _read_texts(path: Path, column: pa.Array, start: int = 0) -> list[dict]:
    """The text records of a `text` column (its first row the file's row `start`): one JSON object per row, no nulls."""
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        raise TokenforgeError(f"{path}: column {TEXT_COLUMN} must hold strings, got {column.type}")
    texts = []
    for row, value in enumerate(column.to_pylist(), start):
        try:
            record = json.loads(value) if value is not None else None
        except json.JSONDecodeError as exc:
            raise TokenforgeError(f"{path}: column {TEXT_COLUMN}, row {row}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise TokenforgeError(f"{path}: column {TEXT_COLUMN}, row {row}: expected a JSON object")
        texts.append(record)
    return texts


def _read_metadata(path: Path, schema: pa.Schema) -> tuple[int, int, int | None]:
    """(h, w, num_codes or None) from the schema metadata."""
    meta = schema.metadata or {}
    try:
        h, w = (int(v) for v in meta[b"grid"].decode().split(","))
        num_codes = int(meta[b"num_codes"]) if b"num_codes" in meta else None
    except (KeyError, ValueError):
        raise TokenforgeError(f"{path}: schema metadata needs grid as b'h,w' (got {meta.get(b'grid')!r})") from None
    return h, w, num_codes


def _packed_bits(path: Path, schema: pa.Schema, byte_width: int, num_tokens: int) -> int:
    """Bits per id of a packed ids column, from the metadata; its width must match them."""
    meta = schema.metadata or {}
    try:
        bits, num_codes = int(meta[b"bits"]), int(meta[b"num_codes"])
    except (KeyError, ValueError):
        raise TokenforgeError(f"{path}: packed ids need bits and num_codes in the schema metadata") from None
    if not (1 <= num_codes <= 1 << MAX_BITS and id_bits(num_codes) <= bits <= MAX_BITS):
        raise TokenforgeError(f"{path}: bits {bits} cannot hold {num_codes} codes (at most {MAX_BITS} bits)")
    nbytes = packed_size(num_tokens, bits)
    if byte_width != nbytes:
        raise TokenforgeError(
            f"{path}: column ids holds {byte_width} bytes per image, {num_tokens} ids of {bits} bits need {nbytes}"
        )
    return bits


def _unpack_array(array: pa.FixedSizeBinaryArray, num_tokens: int, bits: int) -> np.ndarray:
    """int64 (N, num_tokens) ids of a packed ids array (a record batch's column)."""
    if len(array) == 0:
        return np.zeros((0, num_tokens), dtype=np.int64)
    nbytes = array.type.byte_width
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    packed = data[array.offset * nbytes : (array.offset + len(array)) * nbytes].reshape(len(array), nbytes)
    return unpack_ids(packed, num_tokens, bits)


def read_throughput(path: str | Path, repeats: int = 3) -> float:
    """Images per second of `load_tokens(path)`: the best of `repeats` timed reads (least disturbed)."""
    if repeats < 1:
        raise TokenforgeError(f"repeats {repeats}: must be at least 1")
    best, count = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = len(load_tokens(path).keys)
        best = min(best, time.perf_counter() - start)
    return count / best if best > 0 else float("inf")


# ---------------------------------------------------------------------------------------------- streamed writing

ROW_GROUP_ROWS = 1 << 16  # rows per row group of a streamed token file: bounds the writer's buffer


class TokenWriter:
    """Writes a token file a batch at a time (`add(TokenSet)` or `add_table` of an already packed table), in row
    groups of ROW_GROUP_ROWS rows, so memory holds one row group and not the split; `close()` finishes the file
    (an empty split still gets its schema from `grid` and `with_text`). Same layout and settings as `save_tokens`:
    a split of up to ROW_GROUP_ROWS rows gives the same file."""

    def __init__(self, path: Path, num_codes: int, grid: tuple[int, int], with_text: bool):
        self.path, self.num_codes, self.grid, self.with_text = Path(path), num_codes, tuple(grid), with_text
        self.tables: list[pa.Table] = []
        self.rows, self.written, self.writer = 0, 0, None

    def add(self, tokens: TokenSet) -> None:
        if (tokens.texts is not None) != self.with_text:
            raise TokenforgeError(f"{self.path}: some images carry a text record and some do not")
        self.add_table(tokens_table(tokens, self.num_codes))

    def add_table(self, table: pa.Table) -> None:
        self.tables.append(table)
        self.rows += table.num_rows
        while self.rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.tables).combine_chunks()
        head, tail = table.slice(0, rows), table.slice(rows)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, head.schema, **PARQUET_OPTIONS)
        self.writer.write_table(head, row_group_size=ROW_GROUP_ROWS)
        self.tables, self.rows, self.written = [tail] if tail.num_rows else [], tail.num_rows, self.written + rows

    def close(self) -> int:
        """Finish the file; returns the number of rows written."""
        if self.rows or self.writer is None:
            if not self.tables:
                h, w = self.grid
                empty = TokenSet([], np.zeros(0, np.int64), np.zeros((0, h, w), np.int64), [] if self.with_text else None)
                self.tables = [tokens_table(empty, self.num_codes)]
            self._flush(self.rows)
        self.writer.close()
        return self.written
