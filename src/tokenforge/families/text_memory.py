"""The text families' memory after a task: rows are items (a question and its answer, a caption) with the kept
tokens of their image and their text as the extra columns `prompt` and `target`; labels are the items' groups (a
question family, a dataset, an object), so the buffer policy balances groups as it balances classes.

On scenes (records with a "scene" whose qa entries list the objects they name), the memory builder also reports
where this task's kept tokens fall (`named_object_stats`): the share on the objects their question names (a
caption: all of its scene's), and the share of the grid those objects cover (what randomly kept tokens get in expectation).

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
from tokenforge.errors import TokenforgeError
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
        memory, info = refit(policy, previous, order, labels, lambda idx, pos: item_rows(items, idx, data, pos, task, labels),
                             lambda idx: self.positions(model, items, idx, data), task, seen, unit=("item", "group", "groups"))
        return memory, {**info, **named_object_stats(memory, items, data, task)}

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


def named_object_stats(memory: Memory, items: Items, data: TextData, task: int) -> dict:
    """Where the kept tokens of the rows of `task` (made from `items`) fall, over the rows whose question names at
    least one object of a scene: named_object_share, the mean share of a row's kept positions on the cells its named
    objects cover (data.sources.scenes.object_positions, on the units' grid); named_object_area, the mean share of
    the grid those cells are (what randomly kept tokens get in expectation; a coreset's share equals it); and
    named_object_rows, how many rows were counted. {} when none is (no scene layouts, e.g. VQA v2 or COCO)."""
    from tokenforge.data.sources.scenes import object_positions

    grid = tuple(int(n) for n in data.units.shape[1:3])
    shares, areas = [], []
    for row in np.flatnonzero(memory.tasks == task).tolist():
        named = named_objects(memory.keys[row], memory.extra["prompt"][row], items, data)
        if not named:
            continue
        cells = np.unique(np.concatenate([object_positions(obj, grid) for obj in named]))
        shares.append(float(np.isin(memory.positions[row], cells).mean()))
        areas.append(len(cells) / (grid[0] * grid[1]))
    if not shares:
        return {}
    return {"named_object_share": float(np.mean(shares)), "named_object_area": float(np.mean(areas)),
            "named_object_rows": len(shares)}  # fmt: skip


def named_objects(key: str, prompt: str, items: Items, data: TextData) -> list[dict]:
    """The scene objects that the question of a memory row (key "<image key>#<item>", `item_rows`) names: its qa
    entry is the one of its record whose question is the row's prompt (a scene record asks one question per family,
    so the text is unique; an ambiguous or missing match, or a record without "scene", names none). A caption row's
    objects are all of its scene's: the scenes' captions name every object."""
    image_key, _, item = key.rpartition("#")
    image = int(items.image[int(item)])
    if data.keys[image] != image_key or items.prompt[int(item)] != prompt:
        raise TokenforgeError(f"memory row {key}: not an item of this task's ({data.keys[image]}, {items.prompt[int(item)]!r})")
    record = data.records[image] or {}
    scene = record.get("scene")
    asked = [qa for qa in record.get("qa", []) if qa.get("question") == prompt]
    if scene and not asked and items.target[int(item)] in record.get("captions", []):
        return list(scene)  # a caption of a scene names every object in it (data/sources/scenes.py)
    if not scene or len(asked) != 1:
        return []
    return [scene[k] for k in asked[0].get("objects", [])]
