"""Masked-token modelling (MTM) on token grids: the label-free pretraining of SeiT++ (shared/METHODS.md §2) in a
simple form, and the filler that replay's `memory.fill: mtm` view uses.

The simple form, said plainly (BEiT-style rather than SeiT++'s MAGE-style): one TokenViT encoder with a learned
mask embedding (code id `codebook_size`, the model option `mask_token`); the masked positions of a grid take it;
every position's output after the final norm goes through a linear predictor over the codebook; the loss is
cross-entropy at the masked positions. SeiT++ drops most masked tokens from the encoder, fills them back with a
4-block decoder and embeds ids with a learned table; here every token stays in the encoder (grids are small)
and ids are read through the frozen codebook as the classifier reads them, so the encoder's weights start a
task-0 classifier directly.

The mask ratio r is drawn once per batch from a normal of mean `mean` and std `std` truncated to [low, high]
(SeiT++: 0.45, 0.25 on [0.4, 1]); ceil(r * h * w) positions per sample, at least one, are masked, each sample
its own positions.

`MTMFiller(directory)` loads a pretrained MTM model and fills grids: wherever a grid holds the mask id, the
predicted code (argmax) takes its place; kept positions stay as they are. Deterministic.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokenforge.errors import TokenforgeError
from tokenforge.models.store import load_model

HEAD_FILE = "mtm_head.safetensors"


class MTMHead(nn.Module):
    """Every token's output (B, N, E) -> logits over the codebook (B, N, codebook_size)."""

    def __init__(self, embed_dim: int, codebook_size: int):
        super().__init__()
        self.proj = nn.Linear(embed_dim, codebook_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


def mask_ratio(generator: torch.Generator, mean: float = 0.45, std: float = 0.25, low: float = 0.4, high: float = 1.0) -> float:
    """One mask ratio from a truncated normal (rejection sampling on the given generator: reproducible)."""
    if not 0 < low <= high <= 1:
        raise TokenforgeError(f"mask ratio range [{low}, {high}]: must satisfy 0 < low <= high <= 1")
    for _ in range(1000):
        r = float(torch.randn((), generator=generator)) * std + mean
        if low <= r <= high:
            return r
    return float(torch.empty(()).uniform_(low, high, generator=generator))  # a mean far outside the range


def mask_grids(ids: torch.Tensor, ratio: float, mask_id: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked ids (B, h, w), mask (B, h, w) bool): ceil(ratio * h * w) random positions per sample take `mask_id`."""
    b, h, w = ids.shape
    n = h * w
    count = min(n, max(1, math.ceil(ratio * n)))
    order = torch.rand(b, n, generator=generator).argsort(1)
    mask = torch.zeros(b, n, dtype=torch.bool).scatter(1, order[:, :count], True).reshape(b, h, w)
    return ids.masked_fill(mask, mask_id), mask


def mtm_loss(model, head: MTMHead, ids: torch.Tensor, mask: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cross-entropy at the masked positions and how many of them are predicted right."""
    prefix = model.vit.num_prefix_tokens
    logits = head(model.forward_tokens(masked)[:, prefix:])  # (B, N, codes)
    flat = mask.flatten(1).to(logits.device)
    target = ids.flatten(1).to(logits.device)[flat]
    picked = logits[flat].float()
    return F.cross_entropy(picked, target), int((picked.argmax(1) == target).sum())


class MTMFiller:
    """A pretrained MTM model (a `tokenforge pretrain --mode mtm` output) that fills masked positions of grids."""

    def __init__(self, directory: Path, device: torch.device | str = "cpu", batch_size: int = 256):
        from safetensors.torch import load_file

        directory = Path(directory)
        self.model = load_model(directory).to(device)
        if not self.model.config.mask_token or self.model.config.input != "tokens":
            raise TokenforgeError(f"{directory}: not a masked-token model (made by `tokenforge pretrain --mode mtm`)")
        head_path = directory / HEAD_FILE
        if not head_path.is_file():
            raise TokenforgeError(f"{head_path}: MTM predictor not found (made by `tokenforge pretrain --mode mtm`)")
        self.head = MTMHead(self.model.config.embed_dim, self.model.config.codebook_size)
        try:
            self.head.load_state_dict(load_file(str(head_path)))
        except RuntimeError as exc:
            raise TokenforgeError(f"{head_path}: does not match {directory / 'model.json'} ({str(exc).splitlines()[0]})") from None
        self.head = self.head.to(device).eval()
        self.device, self.batch_size = torch.device(device), batch_size
        self.mask_id = self.model.config.codebook_size

    def check_codebook(self, codebook: torch.Tensor, where: str) -> None:
        """The filler must speak the task model's vocabulary: the same (standardised) codebook."""
        if tuple(codebook.shape) != tuple(self.model.codebook.shape) or not torch.equal(codebook.cpu(), self.model.codebook.cpu()):
            raise TokenforgeError(f"{where}: the MTM model was made with another tokenizer (codebooks differ)")

    @torch.no_grad()
    def __call__(self, grids: torch.Tensor) -> torch.Tensor:
        """Grids (B, h, w) of code ids with `mask_id` where a code is unknown -> the same grids, unknown codes
        replaced by the model's most likely code given the rest."""
        out = []
        prefix = self.model.vit.num_prefix_tokens
        for part in grids.split(self.batch_size):
            masked = part == self.mask_id
            if not masked.any():
                out.append(part)
                continue
            logits = self.head(self.model.forward_tokens(part.to(self.device))[:, prefix:])
            guess = logits.argmax(-1).reshape(part.shape).cpu()
            out.append(torch.where(masked, guess, part))
        return torch.cat(out) if out else grids
