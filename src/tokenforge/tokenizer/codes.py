"""Code ids as every tokenizer kind numbers them: the most codes a token file can hold, and the check of a pruned
tokenizer's kept codes (the trained ids of the codes in use, renumbered 0..K'-1 in ascending order).

Shared by the trained VQ model (`vq`) and the pretrained diffusers one (`pretrained`), which imports nothing of `vq`.
"""

from __future__ import annotations

import numpy as np

from tokenforge.errors import TokenforgeError

# `tokenforge tokenize` packs ids with at most 16 bits each.
MAX_CODES = 65536


def check_kept_codes(kept, trained: int, where: str) -> None:
    """`kept` must be strictly increasing trained ids in [0, trained), at least one."""
    kept = np.asarray(kept)
    if kept.ndim != 1 or not len(kept) or kept[0] < 0 or kept[-1] >= trained or np.any(np.diff(kept) <= 0):
        raise TokenforgeError(f"{where}: expected strictly increasing code ids in [0, {trained}), at least one")


def checked_ids(ids, size: int):
    """`ids` as a LongTensor that `decode` takes: (N, h, w) ids in [0, size), else a one-line error."""
    import torch

    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.ndim != 3 or ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
        raise TokenforgeError(f"ids: expected (N, h, w) ids in [0, {size}), got shape {tuple(ids.shape)}")
    return ids
