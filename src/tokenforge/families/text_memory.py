"""The text families' memory after a task: rows are items (a question and its answer, a caption) with the kept
tokens of their image and their text as the extra columns `prompt` and `target`; labels are the items' groups (a
question family, a dataset, an object), so the buffer policy balances groups as it balances classes.

What is shared with classification (continual/): the method and its token count (`Policy`), the selection order
(`rank_samples`: random or class_balanced; herding and gradient need the ViT's features), the scorer
(`scorer_for(name, family)`: BLIP's atman, gradient, random) and the whole refit (`policy.refit`: the candidate
bound, then the budget fit, every group the same number of top-priority rows, one more for the first groups while
the leftover bytes allow, older tasks giving up their last-ranked rows). What is the family's: building rows from
items, and scoring them against their own text.
"""

from __future__ import annotations

import numpy as np
import torch

from tokenforge.continual.memory import Memory, kept_units
from tokenforge.continual.policy import Policy, refit
from tokenforge.families.items import Items
from tokenforge.families.text_data import TextData, Texts, flat
from tokenforge.runtime import progress

SCORE_BATCH = 64  # items per scoring call, unless the scorer says (`batch_size`: AtMan's 16)


def item_rows(items: Items, order: np.ndarray, data: TextData, positions: np.ndarray, task: int, labels: np.ndarray) -> Memory:
    """Memory rows of items `order` keeping `positions` (n, k) of their images' units; key "<image key>#<item>"."""
    image = np.asarray(items.image, dtype=np.int64)[order]
    ids = kept_units(data.units[image], positions) if len(order) else np.zeros((0, positions.shape[1]), np.int64)
    return Memory(
        [f"{data.keys[i]}#{j}" for i, j in zip(image, order)],
        labels[order].astype(np.int64),
        np.full(len(order), task, dtype=np.int64),
        positions.astype(np.int64),
        ids,
        {"prompt": [items.prompt[j] for j in order], "target": [items.target[j] for j in order]},
    )


class TextMemory:
    """The memory of tasks 0..t for a text family: the previous rows and this task's items, fitted to the budget."""

    def __init__(self, policy: Policy, family, tokenizer, max_len: int, seed: int):
        self.policy, self.family, self.tokenizer, self.max_len, self.seed = policy, family, tokenizer, max_len, seed

    def build(self, model, previous: Memory, items: Items, labels: np.ndarray, data: TextData, task: int,
              seen: list[int]) -> tuple[Memory, dict]:  # fmt: skip
        """`items` are this task's training items, `labels` their group indices; `seen` the groups of tasks 0..t."""
        from tokenforge.continual.selection import rank_samples

        policy = self.policy
        if not policy.keeps_memory or not len(items):
            return Memory.empty(), {}
        order = rank_samples(model, data.units[np.asarray(items.image, dtype=np.int64)], labels, policy.selection, self.seed)
        return refit(policy, previous, order, labels, lambda idx, pos: item_rows(items, idx, data, pos, task, labels),
                     lambda idx: self.positions(model, items, idx, data), task, seen, unit=("item", "group", "groups"))

    def positions(self, model, items: Items, chosen: np.ndarray, data: TextData) -> np.ndarray:
        """The kept positions (n, k) of each chosen item, ascending: all of them, or its top k by relevance for its
        own target (the scorer's ties go to the lower position)."""
        from tokenforge.continual.scorers import scorer_for, top_positions

        k, n = self.policy.tokens, self.policy.num_positions
        if k >= n:
            return np.tile(np.arange(n, dtype=np.int64), (len(chosen), 1))
        score = scorer_for(self.policy.scorer, self.family.name)
        prompts, targets = [items.prompt[j] for j in chosen], [items.target[j] for j in chosen]
        texts = Texts(self.tokenizer, prompts, targets, self.max_len, self.family.prompt_is_prefix)
        units = torch.from_numpy(data.units[np.asarray(items.image, dtype=np.int64)[chosen]])
        generator = torch.Generator().manual_seed(self.seed + 7)  # apart from the selection's draws
        from tokenforge.continual import SCORERS

        batch = getattr(SCORERS.load(self.policy.scorer), "batch_size", None) or SCORE_BATCH
        out = []
        for i in progress(range(0, len(chosen), batch), desc=f"score tokens ({self.policy.scorer})", unit="batch"):
            index = torch.arange(i, min(i + batch, len(chosen)))
            scores = score(model, flat(units[index]), texts.rows(index), generator=generator)
            out.append(np.sort(top_positions(scores.float().cpu(), k), axis=1))
        return np.concatenate(out).astype(np.int64) if out else np.zeros((0, k), np.int64)
