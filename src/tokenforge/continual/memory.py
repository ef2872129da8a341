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


def serialize(memory: Memory, num_codes: int, num_positions: int, num_classes: int = 2**16) -> bytes:
    """The memory as one zstd-19 frame of an Arrow IPC stream with the smallest integer types.

    `num_codes` bounds the stored values (the codebook size; 256 for pixel patches), `num_positions` the
    positions (h*w), `num_classes` the labels and tasks."""
    return compress(arrow_stream(memory, num_codes, num_positions, num_classes))


def compress(stream: pa.Buffer) -> bytes:
    """One zstd-19 frame of `stream`: the costly step of `serialize` (~0.3 s per MB of stream on one core), which the
    budget fit counts."""
    return _CODEC.compress(stream).to_pybytes()


def arrow_stream(memory: Memory, num_codes: int, num_positions: int, num_classes: int = 2**16) -> pa.Buffer:
    """The memory's Arrow IPC stream before compression (`serialize`'s arguments): cheap, a first guess of its size."""
    k = memory.positions.shape[1] if len(memory) else 1  # an empty memory still needs a valid list width
    unit = memory.ids.shape[2] if memory.ids.ndim == 3 else 1  # pixel patches: values per unit
    small = _small_uint(max(num_classes - 1, 1))
    table = pa.table(
        {
            "key": pa.array(memory.keys, pa.string()),
            "label": pa.array(memory.labels, small),
            "task": pa.array(memory.tasks, small),
            "positions": pa.FixedSizeListArray.from_arrays(pa.array(memory.positions.reshape(-1), _small_uint(num_positions - 1)), k),
            "ids": pa.FixedSizeListArray.from_arrays(pa.array(memory.ids.reshape(-1), _small_uint(num_codes - 1)), k * unit),
            **{name: pa.array(values) for name, values in memory.extra.items()},
        }
    )
    if unit > 1:
        table = table.replace_schema_metadata({b"unit_size": str(unit).encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def write_memory(memory: Memory, path: Path, num_codes: int, num_positions: int, num_classes: int = 2**16) -> int:
    """Write the memory to `path`; return its bytes on disk."""
    data = serialize(memory, num_codes, num_positions, num_classes)
    Path(path).write_bytes(data)
    return Path(path).stat().st_size


def read_memory(path: Path) -> Memory:
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

    unit = int((table.schema.metadata or {}).get(b"unit_size", b"1"))
    ids = grid("ids")
    if unit > 1:  # pixel patches stay uint8 (M, k, F)
        ids = ids.reshape(table.num_rows, -1, unit).astype(np.uint8)
    return Memory(
        table.column("key").to_pylist(),
        table.column("label").to_numpy().astype(np.int64),
        table.column("task").to_numpy().astype(np.int64),
        grid("positions"),
        ids,
        {name: table.column(name).to_pylist() for name in table.column_names if name not in _COLUMNS},
    )

