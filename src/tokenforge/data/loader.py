"""A split's images for a GPU: the tars decoded in DataLoader workers, one `ImageSet` per tar, in key order.

`tar_sets(shard_dir, split, workers=N)` gives worker w the tars w, w+N, w+2N, ... (WebDataset's split_by_worker
rule); the DataLoader takes one item from each worker in turn, and each item is one whole tar, so the tars come
back in key order, as with no workers. With `pin`, the images come in pinned memory for fast copies to the GPU.
Memory: about 2 tars per worker (the DataLoader's prefetch), whatever the dataset's size. Without workers, the
tars are read in this process (tokenforge/data/shards.py `iter_split`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tokenforge.data import shards


class _TarSets(IterableDataset):
    """One dict per tar (keys, labels, images as tensors, texts) of a split, each worker its share of the tars."""

    def __init__(self, shard_dir: Path, split: str, part: int | None):
        self.shard_dir, self.split, self.part = shard_dir, split, part
        self.count = len(shards.shard_urls(shard_dir, split, part))

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in range(worker, self.count, workers):
            for tar in shards.iter_split(self.shard_dir, self.split, 1 << 30, part=self.part, tars=[index], per_tar=True):
                yield {"keys": tar.keys, "labels": torch.from_numpy(tar.labels),
                       "images": torch.from_numpy(tar.images), "texts": tar.texts, "class_names": tar.class_names}


def tar_sets(shard_dir: str | Path, split: str, *, part: int | None = None, workers: int = 0, pin: bool = False):
    """Yield one `ImageSet` per tar of a split (of one shard part), in key order, decoded by `workers` processes."""
    if workers == 0:
        yield from shards.iter_split(shard_dir, split, 1 << 30, part=part, per_tar=True)
        return
    loader = DataLoader(
        _TarSets(Path(shard_dir), split, part), batch_size=None, num_workers=workers, pin_memory=pin,
        collate_fn=lambda item: item, persistent_workers=False,
    )
    for item in loader:
        yield shards.ImageSet(item["keys"], item["labels"].numpy(), item["images"].numpy(), item["class_names"], item["texts"])
