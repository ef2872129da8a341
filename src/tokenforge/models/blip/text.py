"""BLIP's text inputs from the caller's ids: the question for the text encoder (VQA), the decoder sequence and the
loss labels (`TextBatch`).

Id conventions (the caller's tokenizer gives ids; `pad_id`, `bos_id`, `sep_id` are the settings'):

- `target_ids` (B, T) + `target_mask` (1 = token): the answer (VQA) or the caption (captioning), text tokens only,
  WITHOUT bos and WITHOUT the end token. The model builds the decoder input [bos, (prompt), target, sep] and the loss
  counts the target tokens and the closing `sep_id` (BLIP's generate stops on `text_config.sep_token_id`, so `sep_id`
  is the end token; `eos_id` goes to `text_config.eos_token_id`, which only HF's captioning default prompt uses).
  Per sample: the mean over its len(target) + 1 counted tokens.
- `prompt_ids` (B, P) + `prompt_mask`:
  * VQA: the question, passed to the text encoder (cross-attending to the image) exactly as given, e.g. a BERT
    tokenizer's [CLS] question [SEP] for a pretrained checkpoint, or the bare question ids from scratch; at least
    one token per row. The answer decoder cross-attends to the encoded question, masked by `prompt_mask`.
  * captioning: the decoder prefix WITHOUT bos, e.g. the ids of "a picture of" (no [CLS], no [SEP]); may be empty
    (P = 0, or None). The decoder reads [bos, prompt, caption, sep]; only caption and sep count in the loss.
  Rows may be padded anywhere: each row's tokens are moved to the front in order (right padding) before use.
- `generate` returns (B, L) int64, L <= max_new_tokens: the generated target ids only, no bos, no prompt, the end
  token and everything after it replaced by `pad_id` -- the same convention as `target_ids` (a memorised sample gives
  back exactly its target). Greedy (num_beams=1, do_sample=False), in eval mode, deterministic.
- Lengths: the decoder sequence (1 + prompt + target + 1) and the VQA question must fit in `max_text_len`
  (the text position embeddings of a scratch model); longer inputs raise a TokenforgeError (truncate when tokenising).

Which of the two prompt readings applies is the task's `TaskSpec.question` (`models.blip.settings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenforge.errors import TokenforgeError
from tokenforge.models.blip.settings import BlipSettings, TaskSpec


@dataclass
class TextBatch:
    """Text inputs built from the caller's ids (module doc): encoder (VQA) and decoder sequences, loss labels."""

    enc_ids: torch.Tensor | None  # VQA: (B, Lq) question, valid tokens first
    enc_mask: torch.Tensor | None
    dec_ids: torch.Tensor  # (B, Ld): [bos, (prompt), target, sep, pad...]
    dec_mask: torch.Tensor
    labels: torch.Tensor  # (B, Ld): target and sep where they sit in dec_ids, -100 elsewhere

    def rows(self, index: torch.Tensor) -> TextBatch:
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, index)

        return TextBatch(take(self.enc_ids), take(self.enc_mask), take(self.dec_ids), take(self.dec_mask),
                         take(self.labels))


def valid_first(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's valid ids moved to the front in order (stable), and the per-row counts."""
    valid = mask.bool()
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    return ids.gather(1, order), valid.sum(1)


def prompt_rows(settings: BlipSettings, spec: TaskSpec, device: torch.device, prompt_ids: torch.Tensor | None,
                prompt_mask: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids with each row's tokens first (trimmed to the longest row) and the per-row lengths."""
    s = settings
    if prompt_ids is None:
        prompt_ids = torch.zeros((batch, 0), dtype=torch.long)
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != batch:
        raise TokenforgeError(f"blip: prompt_ids must be (B, P) with B = {batch}, got {tuple(prompt_ids.shape)}")
    prompt_ids = prompt_ids.to(device, torch.long)
    prompt_mask = torch.ones_like(prompt_ids) if prompt_mask is None else prompt_mask.to(device)
    prompt, plen = valid_first(prompt_ids, prompt_mask)
    longest = int(plen.max()) if batch else 0
    prompt = prompt[:, :longest]
    if spec.question:
        if batch and int(plen.min()) < 1:
            raise TokenforgeError("blip: a VQA question (prompt) needs at least one token per row")
        if longest > s.max_text_len:
            raise TokenforgeError(f"blip: a question of {longest} tokens exceeds max_text_len {s.max_text_len}")
    return prompt, plen


def text_batch(settings: BlipSettings, spec: TaskSpec, device: torch.device, prompt_ids: torch.Tensor | None,
               prompt_mask: torch.Tensor | None, target_ids: torch.Tensor, target_mask: torch.Tensor | None,
               batch: int) -> TextBatch:
    """The encoder / decoder sequences and labels from the caller's ids (module doc: id conventions)."""
    s = settings
    prompt, plen = prompt_rows(settings, spec, device, prompt_ids, prompt_mask, batch)
    if target_ids.dim() != 2 or target_ids.shape[0] != batch:
        raise TokenforgeError(f"blip: target_ids must be (B, T) with B = {batch}, got {tuple(target_ids.shape)}")
    target_ids = target_ids.to(device, torch.long)
    target_mask = torch.ones_like(target_ids) if target_mask is None else target_mask.to(device)
    target, tlen = valid_first(target_ids, target_mask)
    prefix = torch.zeros_like(plen) if spec.question else plen  # decoder tokens before the target, after bos
    total = 1 + prefix + tlen + 1
    length = int(total.max())
    if length > s.max_text_len:
        raise TokenforgeError(f"blip: a decoder sequence of {length} tokens (bos, prompt, target, sep) exceeds max_text_len {s.max_text_len}")
    dec = torch.full((batch, length), s.pad_id, dtype=torch.long, device=device)
    labels = torch.full((batch, length), -100, dtype=torch.long, device=device)
    col = torch.arange(length, device=device)[None]
    dec[:, 0] = s.bos_id
    if not spec.question and prompt.shape[1]:
        width = min(prompt.shape[1], length - 1)
        keep = col[:, 1 : 1 + width] < (1 + prefix)[:, None]
        dec[:, 1 : 1 + width] = torch.where(keep, prompt[:, :width], dec[:, 1 : 1 + width])
    start = (1 + prefix)[:, None]
    in_target = (col >= start) & (col < start + tlen[:, None])
    if target.shape[1]:
        offset = (col - start).clamp(0, target.shape[1] - 1)
        dec = torch.where(in_target, target.gather(1, offset), dec)
    at_sep = col == start + tlen[:, None]
    dec = torch.where(at_sep, torch.full_like(dec, s.sep_id), dec)
    labels = torch.where(in_target | at_sep, dec, labels)
    dec_mask = (col < total[:, None]).long()
    enc_ids = enc_mask = None
    if spec.question:
        enc_ids, enc_mask = prompt, (torch.arange(prompt.shape[1], device=device)[None] < plen[:, None]).long()
    return TextBatch(enc_ids, enc_mask, dec, dec_mask, labels)
