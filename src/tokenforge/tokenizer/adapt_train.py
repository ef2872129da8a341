"""Training and measuring the TokenAdapt pair (tokenizer/adapt.py): the pieces of the `tokenadapt` stage.

Per batch of train images I with codes z = Tok(I): per-sample spatial transforms A (`draw_spatial`, a share of
identity samples among them), targets Tok(A(I)) (the pixels transformed, then encoded by the VQ encoder) and the
loss CE(g(A(f(z))), Tok(A(I))). A held-out share of the train images measures, for fixed draws of A: how often
argmax g(A(f(z))) is Tok(A(I)) (adapted_accuracy), the same for the trivial baseline of A applied to the id grid
by nearest neighbour (nearest_baseline_accuracy), and how often argmax g(f(z)) is z (identity_accuracy).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from tokenforge.errors import TokenforgeError
from tokenforge.runtime import progress, seed_everything
from tokenforge.tokenizer.adapt import (
    AdapterConfig,
    TokenAdapter,
    apply_spatial,
    draw_spatial,
    lattice_of,
    transform_ids_nearest,
    transform_pixels,
)
from tokenforge.tokenizer.train import encode_all
from tokenforge.tokenizer.vq import VQTokenizer

log = logging.getLogger(__name__)

WEIGHT_DECAY = 0.05
EVAL_BATCH = 256


def check_settings(epochs: int, batch_size: int, lr: float, identity_p: float, holdout: float) -> None:
    for option, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--lr", lr)):
        if not value > 0:
            raise TokenforgeError(f"{option} {value}: must be positive")
    if not 0 <= identity_p < 1:
        raise TokenforgeError(f"--identity-p {identity_p}: must be in [0, 1)")
    if not 0 <= holdout < 1:
        raise TokenforgeError(f"--holdout {holdout}: must be in [0, 1)")


def holdout_split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded share `holdout` of n images held out (at least 1, never all)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    held = min(max(1, round(holdout * n)), n - 1) if holdout > 0 and n > 1 else 0
    return np.sort(order[held:]), np.sort(order[:held])


def adapter_loss(adapter: TokenAdapter, tokenizer: VQTokenizer, images: np.ndarray, ids: torch.Tensor, params):
    """(CE of g(A(f(z))) against Tok(A(I)), the logits, the targets) of one batch."""
    target = tokenizer.encode(transform_pixels(images, params))
    logits = adapter.g(apply_spatial(adapter.f(ids), params))
    return F.cross_entropy(logits, target), logits, target


def train_adapter(tokenizer: VQTokenizer, images: np.ndarray, config: AdapterConfig, *, epochs: int, batch_size: int,
                  lr: float, seed: int, identity_p: float = 0.25, holdout: float = 0.1, tracker=None):
    """Train the adapter on uint8 NHWC train `images`; returns (frozen adapter in eval mode, stats).

    Seeded by `seed`: the same images, tokenizer and settings give the same weights on a CPU."""
    check_settings(epochs, batch_size, lr, identity_p, holdout)
    if len(images) < 1:
        raise TokenforgeError("tokenadapt: no train images")
    seed_everything(seed)
    fit, held = holdout_split(len(images), holdout, seed)
    ids = torch.from_numpy(encode_all(tokenizer, images))
    lattice = lattice_of(tuple(config.grid), tokenizer.config["downsample"])
    adapter = TokenAdapter(config, tokenizer.codebook).train()
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    steps = epochs * -(-len(fit) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    bar = progress(range(epochs), total=epochs, desc="tokenadapt", unit="epoch")
    for epoch in bar:
        total = 0.0
        for idx in torch.from_numpy(fit)[torch.randperm(len(fit), generator=gen)].split(batch_size):
            params = draw_spatial(len(idx), lattice, gen, identity_p)
            loss, _, _ = adapter_loss(adapter, tokenizer, images[idx.numpy()], ids[idx], params)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        losses.append(total / len(fit))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if tracker is not None:
            tracker.log_metrics({"train_loss": losses[-1]}, step=epoch)
    adapter.requires_grad_(False).eval()
    measured = evaluate_adapter(adapter, tokenizer, images[held] if len(held) else images[fit],
                                ids[held] if len(held) else ids[fit], lattice, seed)
    stats = {"losses": losses, "final_loss": losses[-1], "train_images": len(fit), "heldout_images": len(held),
             "eval_split": "heldout" if len(held) else "train", **measured}
    return adapter, stats


def fill_code(tokenizer: VQTokenizer) -> int:
    """The code of a black image (the fill of pixels that a transform uncovers): its most frequent code."""
    height, width = tokenizer.config["image_size"]
    black = np.zeros((1, height, width, tokenizer.config["channels"]), dtype=np.uint8)
    return int(torch.mode(tokenizer.encode(black).flatten()).values)


@torch.no_grad()
def evaluate_adapter(adapter: TokenAdapter, tokenizer: VQTokenizer, images: np.ndarray, ids: torch.Tensor,
                     lattice: tuple[int, int], seed: int) -> dict:
    """Token accuracies on `images` for one seeded draw of transforms (no identity samples): adapted, nearest-
    neighbour baseline and identity reconstruction; and the loss of the adapted prediction."""
    gen = torch.Generator().manual_seed(seed + 1)
    black = fill_code(tokenizer)
    hits = {"adapted": 0, "nearest_baseline": 0, "identity": 0, "unchanged": 0}
    loss_sum, count = 0.0, 0
    for start in range(0, len(images), EVAL_BATCH):
        batch, z = images[start : start + EVAL_BATCH], ids[start : start + EVAL_BATCH]
        params = draw_spatial(len(z), lattice, gen)
        loss, logits, target = adapter_loss(adapter, tokenizer, batch, z, params)
        hits["adapted"] += int((logits.argmax(1) == target).sum())
        hits["nearest_baseline"] += int((transform_ids_nearest(z, params, black) == target).sum())
        hits["identity"] += int((adapter(z).argmax(1) == z).sum())
        hits["unchanged"] += int((target == z).sum())  # how much A changes the tokens at all
        loss_sum += loss.item() * len(z)
        count += len(z)
    cells = count * ids.shape[1] * ids.shape[2]
    out = {f"{name}_accuracy": hit / cells for name, hit in hits.items()}
    out["heldout_loss"] = loss_sum / count
    return out
