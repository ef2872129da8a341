"""The data of the text families (vqa, captioning) as their training job and evaluation read it: a split's units
with the text record of every image (`load_text_data`), the items' prompts and targets as padded id tensors
(`Texts`), and the training loop with BLIP's per-item text loss (`TextLoop`, on engine/loop.py's `TrainLoop`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenforge.engine.loop import TrainLoop
from tokenforge.errors import TokenforgeError


@dataclass
class TextData:
    """One split: keys, units (N, h, w[, F]) and the text record of every image."""

    keys: list[str]
    units: np.ndarray
    records: list[dict]


def load_text_data(input_kind: str, tokens: Path | None, shards: Path | None, split: str, patch: int) -> TextData:
    """A split's units and text: code ids from the token file, or pixel patches from the shards (their json)."""
    if input_kind == "tokens":
        from tokenforge.data.tokens import load_tokens

        if tokens is None:
            raise TokenforgeError("--tokens: required with --input tokens")
        data = load_tokens(tokens)
        keys, units, records, where = data.keys, data.ids, data.texts, tokens
    else:
        from tokenforge.data.shards import load_split
        from tokenforge.models.vit import patchify

        if shards is None:
            raise TokenforgeError("--shards: required with --input pixels")
        images = load_split(shards, split)
        keys, records, where = images.keys, images.texts, shards
        units = patchify(torch.from_numpy(images.images), patch).numpy()
    if records is None:
        raise TokenforgeError(f"{where}: no text with the images; shard a text source (scenes, vqa2:, clevr:, coco-captions:)")
    return TextData(list(keys), units, list(records))


class Texts:
    """The items' prompts and targets as padded id tensors, encoded once with the run's text tokenizer, in BLIP's
    convention (models/blip): targets without bos or end token, cut to fit the decoder's `max_len` positions
    with bos and end token (and a `prefix` prompt, the caption prompt, which the decoder reads first); questions
    (not a prefix) as they are."""

    def __init__(self, tokenizer, prompts: list[str], targets: list[str], max_len: int, prefix: bool):
        from tokenforge.families.text import encode_batch

        if prefix:
            width = max((len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in set(prompts)), default=0)
            target_len = max_len - 2 - width
        else:
            width, target_len = max_len, max_len - 2
        if target_len < 1:
            raise TokenforgeError(f"--text-max-len {max_len}: too short for the prompt ({width} ids) and one target id")
        self.prompt, self.prompt_mask = encode_batch(tokenizer, list(prompts), max(width, 1), add_bos=False, add_eos=False)
        self.target, self.target_mask = encode_batch(tokenizer, list(targets), target_len, add_bos=False, add_eos=False)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(prompt ids, prompt mask, target ids, target mask) of the rows `index`: BLIP's text arguments."""
        return self.prompt[index], self.prompt_mask[index], self.target[index], self.target_mask[index]


def flat(units: torch.Tensor) -> torch.Tensor:
    """Whole grids (B, h, w[, F]) as BLIP's stem takes them: (B, h*w[, F])."""
    return units.flatten(1, 2)


class Objective(torch.nn.Module):
    """What the DeepSpeed engine runs: BLIP's per-item target loss (B,) of units, positions and text."""

    def __init__(self, blip):
        super().__init__()
        self.blip = blip

    def forward(self, units, positions, prompt, prompt_mask, target, target_mask):
        return self.blip.loss(units, positions, prompt, prompt_mask, target, target_mask)


class TextLoop(TrainLoop):
    """The training loop (engine/loop.py) with a text loss: the current items' mean loss, plus the replayed memory
    rows' (as subsets of their kept tokens, with their own question and answer or caption)."""

    def __init__(self, engine, replay, units, texts: Texts, memory_texts: Texts | None, **kwargs):
        super().__init__(engine, None, replay, units, torch.arange(len(units)), **kwargs)
        self.texts, self.memory_texts = texts, memory_texts

    def step_loss(self, idx: torch.Tensor) -> torch.Tensor:
        units, positions = self.replay.current(self.rows(idx))
        loss = self.objective(units if positions is not None else flat(units), positions, self.texts.rows(idx)).mean()
        memory = self.replay.sample(self.state.epoch, self.state.batch)
        if memory is not None:
            m_units, m_positions, rows = memory
            memory_loss = self.objective(m_units, m_positions, self.memory_texts.rows(rows)).mean()
            loss = self.joined(loss, len(idx), memory_loss, len(rows))
        return loss

    def objective(self, units, positions, text) -> torch.Tensor:
        d = self.device
        return self.engine(units.to(d), None if positions is None else positions.to(d), *(t.to(d) for t in text))
