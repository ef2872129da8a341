"""The training and test units of a split as the models take them: code ids (N, h, w) from a token file, or
uint8 pixel patches (N, h, w, F) of the tokenizer's grid from the shards (the pixel baseline).

A job holds only what it uses: `split_units` keeps the rows of some classes (and keys), token ids at their narrow
type (uint8/uint16, data/tokens.py `narrow_dtype`; `wide` makes int64 of them where a consumer indexes with them),
`class_examples` one row per class, and `UnitBatches` streams a split in batches. Token files are read record batch
by record batch; the pixel shards are decoded whole and then filtered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenforge.errors import TokenforgeError


@dataclass
class Units:
    """Samples of a split: keys, labels (N,), units (N, h, w[, F]); `total` counts the split's rows before any filter."""

    keys: list[str]
    labels: np.ndarray
    units: np.ndarray
    total: int = 0

    def where(self, classes: list[int]) -> "Units":
        mask = np.isin(self.labels, classes)
        return Units([k for k, m in zip(self.keys, mask) if m], self.labels[mask], self.units[mask], self.total)


def load_units(kind: str, tokens: Path | None, shards: Path | None, split: str, patch: int):
    """(keys, labels, units) of a split: code ids (N, h, w), or uint8 pixel patches (N, h, w, F)."""
    if kind == "tokens":
        from tokenforge.data.tokens import load_tokens

        data = load_tokens(_token_path(tokens))
        return data.keys, data.labels, data.ids
    images = _pixel_split(shards, split)
    return images.keys, images.labels, _patches(images.images, patch)


def split_units(kind: str, tokens: Path | None, shards: Path | None, split: str, patch: int, *,
                classes=None, keys=None) -> Units:  # fmt: skip
    """The split's samples of `classes` whose key is in `keys` (each when given), in file order; code ids narrow."""
    if kind == "tokens":
        from tokenforge.data.tokens import TokenFile, load_tokens

        path = _token_path(tokens)
        data = load_tokens(path, labels=classes, keys=keys, narrow=True)
        return Units(data.keys, data.labels, data.ids, TokenFile.open(path).parquet.metadata.num_rows)
    images = _pixel_split(shards, split)
    mask = np.ones(len(images.keys), dtype=bool)
    if classes is not None:
        mask &= np.isin(images.labels, list(classes))
    if keys is not None:
        wanted = set(keys)
        mask &= np.array([k in wanted for k in images.keys], dtype=bool)
    if mask.all():  # nothing filtered: no copy of the decoded images
        return Units(list(images.keys), images.labels, _patches(images.images, patch), len(images.keys))
    chosen = [k for k, m in zip(images.keys, mask) if m]
    return Units(chosen, images.labels[mask], _patches(images.images[mask], patch), len(images.keys))


def class_examples(kind: str, tokens: Path | None, shards: Path | None, split: str, patch: int, classes) -> Units:
    """The first sample (in file order) of each of `classes` that has one; a token file is read only until all are found."""
    if kind != "tokens":
        data = split_units(kind, tokens, shards, split, patch, classes=classes)
        first = {}
        for i, label in enumerate(data.labels.tolist()):
            first.setdefault(label, i)
        pick = sorted(first.values())
        return Units([data.keys[i] for i in pick], data.labels[pick], data.units[pick], data.total)
    from tokenforge.data.tokens import TokenFile, iter_tokens

    path, wanted, found = _token_path(tokens), {int(c) for c in classes}, []
    source = TokenFile.open(path)
    for batch in iter_tokens(path, 4096, narrow=True):
        for i, label in enumerate(batch.labels.tolist()):
            if label in wanted:
                wanted.discard(label)
                found.append((batch.keys[i], label, batch.ids[i]))
        if not wanted:
            break
    units = np.stack([u for _, _, u in found]) if found else np.zeros((0, *source.grid), source.ids_dtype(True))
    labels = np.array([label for _, label, _ in found], dtype=np.int64)
    return Units([k for k, _, _ in found], labels, units, source.parquet.metadata.num_rows)


class UnitBatches:
    """(units, labels) batches of a split in file order, code ids narrow: streamed from a token file, or cut from the
    pixel shards (decoded whole). `rows` counts the rows yielded so far."""

    def __init__(self, kind: str, tokens: Path | None, shards: Path | None, split: str, patch: int, batch_rows: int):
        if batch_rows < 1:
            raise TokenforgeError(f"--batch-size: must be at least 1, got {batch_rows}")
        self.rows = 0
        if kind == "tokens":
            from tokenforge.data.tokens import iter_tokens

            self.batches = ((b.ids, b.labels) for b in iter_tokens(_token_path(tokens), batch_rows, narrow=True))
        else:
            _, labels, units = load_units(kind, tokens, shards, split, patch)
            self.batches = ((units[i : i + batch_rows], labels[i : i + batch_rows]) for i in range(0, len(units), batch_rows))

    def __iter__(self):
        for units, labels in self.batches:
            self.rows += len(labels)
            yield units, labels


def wide(units: np.ndarray) -> np.ndarray:
    """Code ids (N, h, w) as int64, the type models and continual/ index codebooks with; pixel patches as they are."""
    return units.astype(np.int64) if units.ndim == 3 else units


def _token_path(tokens: Path | None) -> Path:
    if tokens is None:
        raise TokenforgeError("--tokens: required with --input tokens")
    return tokens


def _pixel_split(shards: Path | None, split: str):
    from tokenforge.data.shards import load_split

    if shards is None:
        raise TokenforgeError("--shards: required with --input pixels")
    return load_split(shards, split)


def _patches(images: np.ndarray, patch: int) -> np.ndarray:
    import torch

    from tokenforge.models.vit import patchify

    return patchify(torch.from_numpy(images), patch).numpy()
