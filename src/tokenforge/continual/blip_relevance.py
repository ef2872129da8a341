"""Relevance of each image unit for BLIP's target (VQA answer, caption): which tokens of a kept sample the replay
memory stores (`memory.scorer` for the vqa and captioning families; the ViT's scorers are `continual.scorers`).

`relevance(model, ...)` gives a score per image unit, (B, N'), in eval mode (the model's mode restored after), with
no gradient left on parameters. `model` is a `tokenforge.models.blip.BlipModel`, read through its public `pack`,
`text_batch`, `losses`, `key_scale`, `stem.tap` and `device` (this module imports nothing from the model's package:
the model calls it from `BlipModel.relevance`).

- `gradient`: gradient x input of the per-sample target loss w.r.t. each unit's projected embedding (the stem's
  Linear output, before the position embedding and the class token), |sum over the width|.
- `atman`: AtMan (Deiseroth et al., 2023), faithfully: for each unit i, the pre-softmax attention scores towards
  image token i are multiplied by (1 - 0.9) in every layer, in every head and for every query, and the relevance is
  loss_suppressed - loss_plain. "Every layer" means every attention that attends to image tokens: the vision encoder's
  self-attention and the text model's cross-attention to the image (VQA: the question encoder's; captioning: the
  caption decoder's). The VQA answer decoder attends to question tokens, not image tokens, and is left alone.
  `atman_scope="vision"` suppresses in the vision encoder only (what the reference BLIP AtMan code does).
  Done by forward hooks that scale token i's *keys* (`BlipModel.key_scale`: the key slice of BlipAttention's fused
  `qkv` output; the cross-attention `key` Linear's output): score(q, k_i) = q . (f k_i) / sqrt(d) = f * score(q, k_i),
  exactly the multiplied score. The class token is never suppressed. AtMan's optional "conceptual suppression" (also
  suppressing tokens whose embeddings are cosine-similar to token i) is not implemented. The B * N' perturbed copies
  run in chunks of `chunk` rows. As in AtMan, scaling a negative score by 0.1 *raises* that token's attention, so a
  relevance can be negative, and on tiny trained models the one informative unit was not reliably ranked first
  (measured; the gradient scorer ranked it first more often).
- `random`: uniform [0, 1) scores from `generator`.
"""

from __future__ import annotations

from typing import Any

import torch

from tokenforge.errors import TokenforgeError

RELEVANCE_METHODS = ("gradient", "atman", "random")
ATMAN_SCOPES = ("all", "vision")
ATMAN_SUPPRESSION = 0.9  # AtMan's f: scores towards the suppressed token are multiplied by 1 - f


def relevance(model: Any, units: torch.Tensor, positions: torch.Tensor | None, prompt_ids: torch.Tensor | None,
              prompt_mask: torch.Tensor | None, target_ids: torch.Tensor, target_mask: torch.Tensor | None,
              method: str, generator: torch.Generator | None = None, chunk: int = 64,
              atman_scope: str = "all") -> torch.Tensor:
    """A score per image unit (B, N') for how much the target depends on it (module doc: gradient, atman, random).
    Eval mode inside, the mode restored after; no gradient is left on parameters.

    `model`: a BlipModel; the arguments are `BlipModel.loss`'s (`models.blip.text`: id conventions). `chunk`:
    perturbed copies per forward (atman); `atman_scope`: "all" (the vision self-attention and the text
    cross-attention to the image) or "vision" (the vision encoder only, as the reference BLIP AtMan code)."""
    if method not in RELEVANCE_METHODS:
        raise TokenforgeError(f"blip: unknown relevance method {method!r}; expected one of {', '.join(RELEVANCE_METHODS)}")
    if atman_scope not in ATMAN_SCOPES:
        raise TokenforgeError(f"blip: unknown atman_scope {atman_scope!r}; expected one of {', '.join(ATMAN_SCOPES)}")
    packed = model.pack(units, positions)
    batch, n = packed.shape[:2]
    if method == "random":
        return random_relevance(batch, n, generator, model.device)
    text = model.text_batch(prompt_ids, prompt_mask, target_ids, target_mask, batch)
    was_training = model.training
    model.eval()
    try:
        if method == "gradient":
            return gradient_relevance(model, packed, text)
        return atman_relevance(model, packed, text, max(1, int(chunk)), atman_scope == "all")
    finally:
        model.train(was_training)


def random_relevance(batch: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) scores (batch, n), drawn on the generator's device, then moved to `device`."""
    return torch.rand((batch, n), generator=generator, device=generator.device if generator else "cpu").to(device)


def gradient_relevance(model: Any, packed: torch.Tensor, text: Any) -> torch.Tensor:
    """|sum over the width of gradient x input| at each unit's projected embedding (B, N'), for packed units and a
    `TextBatch`; the stem's `tap` makes those embeddings gradient leaves, so parameters get no gradient."""
    stem = model.stem
    taps: list[torch.Tensor] = []
    stem.tap = taps
    try:
        with torch.enable_grad():
            losses = model.losses(packed, text)
            (grad,) = torch.autograd.grad(losses.sum(), taps[0])
    finally:
        stem.tap = None
    return (grad * taps[0].detach()).sum(-1).abs().float()


@torch.no_grad()
def atman_relevance(model: Any, packed: torch.Tensor, text: Any, chunk: int, cross: bool) -> torch.Tensor:
    """AtMan (module doc): the loss with unit i's keys scaled by 1 - ATMAN_SUPPRESSION minus the plain loss, (B, N');
    the B * N' perturbed copies in chunks of `chunk`; `cross`: in the text cross-attention to the image too."""
    batch, n = packed.shape[:2]
    plain = model.losses(packed, text)
    rows = torch.arange(batch * n, device=model.device)
    scores = torch.empty(batch * n, device=model.device)
    for begin in range(0, batch * n, chunk):
        r = rows[begin : begin + chunk]
        sample, unit = r // n, r % n
        scale = torch.ones((len(r), 1 + n), device=model.device)
        scale[torch.arange(len(r), device=model.device), 1 + unit] = 1.0 - ATMAN_SUPPRESSION
        with model.key_scale(scale, cross):
            losses = model.losses(packed.index_select(0, sample), text.rows(sample))
        scores[begin : begin + chunk] = losses - plain[sample]
    return scores.view(batch, n)
