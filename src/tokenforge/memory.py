"""The replay memory: after each task keep a few samples and, inside each, only their top tokens.

Policy (what to keep) is separate from replay (how the trainer uses it). This first version picks
samples at random per class and ranks each sample's tokens by attention rollout (head-averaged
attention plus identity, row-normalised, multiplied across layers; the CLS row), or at random as a
control. The memory stores
only key, label, task, kept positions and kept ids, as a zstd Parquet file; its size is the file's
bytes on disk, counted after writing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .errors import TokenforgeError
from .io import read_parquet

_COLUMNS = ("key", "label", "task", "positions", "ids")


@dataclass
class Memory:
    keys: list[str]
    labels: np.ndarray  # int64 (M,)
    tasks: np.ndarray  # int64 (M,)
    positions: np.ndarray  # int64 (M, k): kept token positions in the row-major grid
    ids: np.ndarray  # int64 (M, k): the code ids at those positions (pixel baseline: uint8 patches (M, k, F))

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls) -> "Memory":
        z = np.zeros(0, dtype=np.int64)
        return cls([], z, z.copy(), np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64))

    def concat(self, other: "Memory") -> "Memory":
        if not len(self):
            return other
        if not len(other):
            return self
        if self.ids.shape[1] != other.ids.shape[1]:
            raise TokenforgeError("memory: cannot join memories that keep different token counts")
        return Memory(
            self.keys + other.keys,
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.tasks, other.tasks]),
            np.concatenate([self.positions, other.positions]),
            np.concatenate([self.ids, other.ids]),
        )


def attention_maps(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities (B, heads, N, N) of every block, recomputed from each block's qkv."""
    maps: list[torch.Tensor] = []

    def hook(attn, inputs, _output):
        x = inputs[0]
        b, n, _ = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        maps.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))

    handles = [block.attn.register_forward_hook(hook) for block in model.vit.blocks]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def attention_rollout(model, ids: torch.Tensor) -> torch.Tensor:
    """Relevance of every grid token (B, h*w) for the class token, by attention rollout (Abnar & Zuidema)."""
    maps = attention_maps(model, ids)
    n = maps[0].shape[-1]
    eye = torch.eye(n)
    rollout = eye.expand(maps[0].shape[0], n, n)
    for attn in maps:
        a = attn.mean(dim=1) + eye  # the residual path
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    prefix = model.vit.num_prefix_tokens
    return rollout[:, 0, prefix:]


def select_random(labels: np.ndarray, samples_per_class: int, seed: int) -> np.ndarray:
    """Indices of up to `samples_per_class` random samples of every class present, sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.choice(members, size=min(samples_per_class, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def keep_count(num_tokens: int, token_fraction: float) -> int:
    if not 0 < token_fraction <= 1:
        raise TokenforgeError(f"memory.token_fraction: must be in (0, 1], got {token_fraction}")
    return max(1, int(round(num_tokens * token_fraction)))


SCORERS = ("rollout", "random")


def token_scores(model, ids: np.ndarray, scorer: str, seed: int, batch_size: int = 256) -> torch.Tensor:
    """A relevance score per grid token (M, h*w): attention rollout, or random (the control)."""
    if scorer == "random":
        return torch.rand(len(ids), ids.shape[1] * ids.shape[2], generator=torch.Generator().manual_seed(seed))
    if scorer != "rollout":
        raise TokenforgeError(f"memory.scorer: unknown scorer {scorer!r}; expected one of {', '.join(SCORERS)}")
    model.eval()
    return torch.cat(
        [attention_rollout(model, torch.from_numpy(ids[i : i + batch_size])) for i in range(0, len(ids), batch_size)]
    )


def build_task_memory(
    model,
    keys: list[str],
    labels: np.ndarray,
    ids: np.ndarray,
    task: int,
    token_fraction: float,
    scorer: str = "rollout",
    seed: int = 0,
) -> Memory:
    """Keep the top tokens (by `scorer`) of the given samples (ids: (M, h, w))."""
    if len(keys) == 0:
        return Memory.empty()
    k = keep_count(ids.shape[1] * ids.shape[2], token_fraction)
    scores = token_scores(model, ids, scorer, seed)
    # Stable sort on the negated score: ties go to the earlier position, so results are deterministic.
    top = torch.argsort(-scores, dim=1, stable=True)[:, :k]
    positions = torch.sort(top, dim=1).values.numpy().astype(np.int64)
    flat = ids.reshape(len(ids), ids.shape[1] * ids.shape[2], -1)  # (M, h*w, F): F = 1 for code ids
    kept = np.take_along_axis(flat, positions[:, :, None], axis=1)
    kept = kept[:, :, 0].astype(np.int64) if ids.ndim == 3 else kept
    return Memory(list(keys), labels.astype(np.int64), np.full(len(keys), task, np.int64), positions, kept)


def _small_uint(max_value: int) -> pa.DataType:
    return pa.uint8() if max_value < 2**8 else pa.uint16() if max_value < 2**16 else pa.uint32()


def write_memory(memory: Memory, path: Path, num_codes: int, num_positions: int) -> int:
    """Write the memory as zstd Parquet with the smallest integer types; return its bytes on disk.

    `num_codes` bounds the stored values (the codebook size; 256 for pixel patches), `num_positions`
    the positions (h*w)."""
    k = memory.positions.shape[1] if len(memory) else 1  # an empty memory still needs a valid list width
    unit = memory.ids.shape[2] if memory.ids.ndim == 3 else 1  # pixel patches: values per unit
    table = pa.table(
        {
            "key": pa.array(memory.keys, pa.string()),
            "label": pa.array(memory.labels, pa.int16()),
            "task": pa.array(memory.tasks, pa.int16()),
            "positions": pa.FixedSizeListArray.from_arrays(
                pa.array(memory.positions.reshape(-1), _small_uint(num_positions - 1)), k
            ),
            "ids": pa.FixedSizeListArray.from_arrays(pa.array(memory.ids.reshape(-1), _small_uint(num_codes - 1)), k * unit),
        }
    ).replace_schema_metadata({b"unit_size": str(unit).encode()})
    pq.write_table(table, path, compression="zstd", compression_level=19)
    return Path(path).stat().st_size


def read_memory(path: Path) -> Memory:
    table = read_parquet(path, _COLUMNS, "memory file")
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
    )
