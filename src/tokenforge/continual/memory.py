"""The replay memory record and its storage: after each task the most important samples and, inside each,
only its top tokens.

What to keep is the buffer policy's (continual/policy.py); how it is fed back is the replay's
(continual/replay.py). Five methods (`memory.method`) share one code path:

- `none`: no memory (fine-tuning, the lower bound);
- `coreset`: whole samples (every token) chosen by `selection`, as many as the byte budget holds;
- `coretokens`: every training sample, each with only its top tokens, as few as the budget needs;
- `coretokenset`: the core tokenset: samples chosen by `selection`, each with its top `token_fraction`
  of tokens by the attribution `scorer`, as many samples as the budget holds;
- `joint`: no memory, but each task trains on the data of every task so far (the upper bound).

Storage is key, label, task, kept positions and kept ids, nothing else: an Arrow IPC stream compressed
as one zstd-19 frame (`memory.arrows.zst`, readable with `pyarrow.input_stream(path, compression="zstd")`).
Parquet's footer alone (~1 KB) would exceed a 1% budget on small datasets; this container costs ~300
bytes. The memory's size is that file's bytes on disk.

The kept positions are stored whichever way is smaller raw: `list`, a fixed-size list of k small unsigned ints
per row (uint8 up to 256 positions, uint16 above), or `mask`, a bitmask of the n-position grid per row
(`np.packbits`, big-endian bits, a fixed-size binary of ceil(n/8) bytes), cheaper once a row keeps more than
about n/8 positions (25% of a 12x12 grid: 18 bytes, not 36). A mask file says so in its schema metadata
(b"positions" = b"mask", b"num_positions" = n); a file without that key (every file written before) holds the list.

A family may add columns to a row (classification adds none; see tokenforge.families).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokenforge.errors import TokenforgeError

MEMORY_FILE = "memory.arrows.zst"
_COLUMNS = ("key", "label", "task", "positions", "ids")
_CODEC = pa.Codec("zstd", compression_level=19)
_ENCODINGS = ("auto", "list", "mask")  # of the kept positions: `positions_encoding`
_MASK_ROWS = 1 << 16  # rows a mask is packed or unpacked in at once: ~37 MB of bits at 576 positions


@dataclass
class Memory:
    keys: list[str]
    labels: np.ndarray  # int64 (M,)
    tasks: np.ndarray  # int64 (M,)
    positions: np.ndarray  # int64 (M, k): kept token positions in the row-major grid, ascending
    ids: np.ndarray  # int64 (M, k): the code ids at those positions (pixel baseline: uint8 patches (M, k, F))
    # A family's own columns, one list of M values each (classification: none; VQA: the question and answer).
    extra: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def tokens_per_sample(self) -> int:
        return int(self.positions.shape[1]) if len(self) else 0

    @classmethod
    def empty(cls) -> "Memory":
        z = np.zeros(0, dtype=np.int64)
        return cls([], z, z.copy(), np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64))

    def rows(self, index: np.ndarray) -> "Memory":
        index = np.asarray(index, dtype=np.int64)
        extra = {name: [values[i] for i in index] for name, values in self.extra.items()}
        return Memory([self.keys[i] for i in index], self.labels[index], self.tasks[index], self.positions[index], self.ids[index], extra)

    def concat(self, other: "Memory") -> "Memory":
        if not len(self):
            return other
        if not len(other):
            return self
        if self.ids.shape[1:] != other.ids.shape[1:]:
            raise TokenforgeError("memory: cannot join memories that keep different token counts")
        if set(self.extra) != set(other.extra):
            raise TokenforgeError(f"memory: cannot join memories with columns {sorted(self.extra)} and {sorted(other.extra)}")
        return Memory(
            self.keys + other.keys,
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.tasks, other.tasks]),
            np.concatenate([self.positions, other.positions]),
            np.concatenate([self.ids, other.ids]),
            {name: values + other.extra[name] for name, values in self.extra.items()},
        )


def kept_units(units: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The units (M, h, w[, F]) at `positions` (M, k): code ids as int64 (M, k), pixel patches as they are (M, k, F)."""
    flat = units.reshape(len(units), units.shape[1] * units.shape[2], -1)
    kept = np.take_along_axis(flat, positions[:, :, None], axis=1)
    return kept[:, :, 0].astype(np.int64) if units.ndim == 3 else kept


# --- storage ----------------------------------------------------------------------------------------


def _small_uint(max_value: int) -> pa.DataType:
    return pa.uint8() if max_value < 2**8 else pa.uint16() if max_value < 2**16 else pa.uint32()


def serialize(
    memory: Memory, num_codes: int, num_positions: int, num_classes: int = 2**16, positions: str = "auto"
) -> bytes:
    """The memory as one zstd-19 frame of an Arrow IPC stream with the smallest integer types.

    `num_codes` bounds the stored values (the codebook size; 256 for pixel patches), `num_positions` the
    positions (h*w), `num_classes` the labels and tasks; `positions` is their encoding (`arrow_stream`)."""
    return compress(arrow_stream(memory, num_codes, num_positions, num_classes, positions))


def compress(stream: pa.Buffer) -> bytes:
    """One zstd-19 frame of `stream`: the costly step of `serialize` (~0.3 s per MB of stream on one core), which the
    budget fit counts."""
    return _CODEC.compress(stream).to_pybytes()


def _strictly_ascending(positions: np.ndarray, num_positions: int) -> bool:
    """Every row's positions strictly ascending within 0..num_positions-1: what a bitmask can hold."""
    if not positions.size:
        return True
    return bool(positions.min() >= 0 and positions.max() < num_positions and (np.diff(positions, axis=1) > 0).all())


def positions_encoding(memory: Memory, num_positions: int, positions: str = "auto") -> str:
    """The encoding `arrow_stream` writes the kept positions in: "list" or "mask".

    "auto": the mask when its raw column is smaller (ceil(n/8) bytes a row against k times the list's int size; ties:
    the list) and every row's positions are strictly ascending within the grid; an empty memory is a list. "mask"
    raises when a row cannot be one."""
    if positions not in _ENCODINGS:
        raise TokenforgeError(f"memory positions encoding: unknown value {positions!r} (use one of {', '.join(_ENCODINGS)})")
    if not len(memory) or positions == "list":
        return "list"
    if positions == "auto":
        k, itemsize = memory.positions.shape[1], _small_uint(num_positions - 1).byte_width
        if -(-num_positions // 8) >= k * itemsize:
            return "list"
    if _strictly_ascending(memory.positions, num_positions):
        return "mask"
    if positions == "mask":
        raise TokenforgeError(
            f"memory positions encoding 'mask': a row's positions are not strictly ascending within 0..{num_positions - 1}"
        )
    return "list"


def _mask_column(positions: np.ndarray, num_positions: int) -> pa.Array:
    """Each row's positions as `np.packbits` of its boolean mask over the grid: a fixed-size binary of ceil(n/8) bytes."""
    packed = np.empty((len(positions), -(-num_positions // 8)), dtype=np.uint8)
    for start in range(0, len(positions), _MASK_ROWS):
        block = positions[start:start + _MASK_ROWS]
        bits = np.zeros((len(block), num_positions), dtype=bool)
        bits[np.arange(len(block))[:, None], block] = True
        packed[start:start + len(block)] = np.packbits(bits, axis=1)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(packed.shape[1]), len(packed), [None, pa.py_buffer(packed.tobytes())])


def arrow_stream(
    memory: Memory, num_codes: int, num_positions: int, num_classes: int = 2**16, positions: str = "auto"
) -> pa.Buffer:
    """The memory's Arrow IPC stream before compression (`serialize`'s arguments): cheap, a first guess of its size.

    `positions`: "list", "mask" or "auto" (`positions_encoding`); a mask is recorded in the schema metadata, beside
    the values per unit of pixel patches (b"unit_size")."""
    encoding = positions_encoding(memory, num_positions, positions)
    k = memory.positions.shape[1] if len(memory) else 1  # an empty memory still needs a valid list width
    unit = memory.ids.shape[2] if memory.ids.ndim == 3 else 1  # pixel patches: values per unit
    small = _small_uint(max(num_classes - 1, 1))
    if encoding == "mask":
        kept = _mask_column(memory.positions, num_positions)
    else:
        kept = pa.FixedSizeListArray.from_arrays(pa.array(memory.positions.reshape(-1), _small_uint(num_positions - 1)), k)
    table = pa.table(
        {
            "key": pa.array(memory.keys, pa.string()),
            "label": pa.array(memory.labels, small),
            "task": pa.array(memory.tasks, small),
            "positions": kept,
            "ids": pa.FixedSizeListArray.from_arrays(pa.array(memory.ids.reshape(-1), _small_uint(num_codes - 1)), k * unit),
            **{name: pa.array(values) for name, values in memory.extra.items()},
        }
    )
    metadata = {b"unit_size": str(unit).encode()} if unit > 1 else {}
    if encoding == "mask":
        metadata.update({b"positions": b"mask", b"num_positions": str(num_positions).encode()})
    if metadata:
        table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def write_memory(
    memory: Memory, path: Path, num_codes: int, num_positions: int, num_classes: int = 2**16, positions: str = "auto"
) -> int:
    """Write the memory to `path` (`serialize`'s arguments); return its bytes on disk."""
    data = serialize(memory, num_codes, num_positions, num_classes, positions)
    Path(path).write_bytes(data)
    return Path(path).stat().st_size


def _unmask(path: Path, table: pa.Table, k: int) -> np.ndarray:
    """The (M, k) ascending positions of a mask file's `positions` column; every row must set k bits."""
    metadata = table.schema.metadata or {}
    column = table.column("positions").combine_chunks()
    if b"num_positions" not in metadata or not pa.types.is_fixed_size_binary(column.type):
        raise TokenforgeError(f"{path}: memory file's position mask lacks num_positions or is not fixed-size binary")
    n, width = int(metadata[b"num_positions"]), column.type.byte_width
    packed = np.frombuffer(column.buffers()[1], dtype=np.uint8)[column.offset * width:(column.offset + len(column)) * width]
    packed, positions = packed.reshape(len(column), width), np.empty((len(column), k), dtype=np.int64)
    for start in range(0, len(column), _MASK_ROWS):
        bits = np.unpackbits(packed[start:start + _MASK_ROWS], axis=1, count=n)
        counts = bits.sum(axis=1)
        if (counts != k).any():
            row = start + int(np.flatnonzero(counts != k)[0])
            got = int(counts[row - start])
            raise TokenforgeError(f"{path}: memory file's position mask row {row} keeps {got} positions, its ids {k}")
        positions[start:start + len(bits)] = np.nonzero(bits)[1].reshape(len(bits), k)
    return positions


def read_memory(path: Path) -> Memory:
    """The memory in `path`, its positions read from either encoding (a list or, per the schema metadata, a mask)."""
    path = Path(path)
    if not path.is_file():
        raise TokenforgeError(f"{path}: memory file not found")
    try:
        with pa.input_stream(str(path), compression="zstd") as stream:
            table = pa.ipc.open_stream(stream).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise TokenforgeError(f"{path}: not a tokenforge memory file ({str(exc).splitlines()[0]})") from None
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise TokenforgeError(f"{path}: memory file lacks column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        return Memory.empty()

    def grid(col: str) -> np.ndarray:
        arr = table.column(col).combine_chunks()
        return arr.flatten().to_numpy().astype(np.int64).reshape(table.num_rows, -1)

    metadata = table.schema.metadata or {}
    unit = int(metadata.get(b"unit_size", b"1"))
    ids = grid("ids")
    k = ids.shape[1] // unit
    if unit > 1:  # pixel patches stay uint8 (M, k, F)
        ids = ids.reshape(table.num_rows, -1, unit).astype(np.uint8)
    encoding = metadata.get(b"positions", b"list")  # no key: a list (every file written before the mask)
    if encoding not in (b"list", b"mask"):
        raise TokenforgeError(f"{path}: memory file has an unknown positions encoding {encoding.decode(errors='replace')!r}")
    return Memory(
        table.column("key").to_pylist(),
        table.column("label").to_numpy().astype(np.int64),
        table.column("task").to_numpy().astype(np.int64),
        _unmask(path, table, k) if encoding == b"mask" else grid("positions"),
        ids,
        {name: table.column(name).to_pylist() for name in table.column_names if name not in _COLUMNS},
    )

