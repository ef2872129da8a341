"""Train the VQ tokenizer, prune its codebook to the codes in use, and measure it.

`train_tokenizer` fits a `VQTokenizer` (pixel MSE plus the VQ commitment loss) on uint8 NHWC images;
`prune_to_used` keeps only the codes that encoding the train images uses (SeiT pruned 8192 -> 391);
`reconstruction_mse`/`psnr` and `code_stats` are the numbers of the tokenizer's stats.json (with
`scene_color_recovery` on scenes), and `save_reconstruction_grid` writes reconstructions.png. The `tokenizer`
stage (tokenforge/cli/tokenizer.py) runs them in that order.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tokenforge.data import shards
from tokenforge.errors import TokenforgeError
from tokenforge.runtime import progress, seed_everything
from tokenforge.tokenizer.vq import VQTokenizer, build_model, to_float, trained_size

log = logging.getLogger(__name__)

# The reconstruction grid: this many test images, each scaled up (nearest neighbour) to at least GRID_TILE px.
GRID_IMAGES = 16
GRID_TILE = 64


# ---------------------------------------------------------------------------------------------- training


def train_tokenizer(
    images: np.ndarray,
    config: dict[str, Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    commitment: float = 0.25,
    tracker=None,
    device="cpu",
) -> tuple[VQTokenizer, list[float]]:
    """Train a VQTokenizer on uint8 NHWC `images`; returns (model in eval mode, mean loss per epoch).

    Seeded by config["seed"]: same images, config and arguments give the same weights on a CPU.
    """
    for option, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--lr", lr)):
        if value <= 0:
            raise TokenforgeError(f"{option} {value}: must be positive")
    seed_everything(config["seed"])
    model = build_model(config, commitment).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(config["seed"])
    losses = []
    bar = progress(range(epochs), total=epochs, desc="tokenizer", unit="epoch")
    for epoch in bar:
        total, seen = 0.0, 0
        for idx in torch.randperm(len(images), generator=order).split(batch_size):
            x = to_float(images[idx.numpy()]).to(device)  # one batch in float at a time, on the job's device
            recon, _, vq_loss = model(x)
            loss = F.mse_loss(recon, x) + vq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        losses.append(total / seen)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if tracker is not None:
            tracker.log_metrics({"train_loss": losses[-1]}, step=epoch)
    return model.cpu().eval(), losses


def load_splits(shard_dir: Path, max_images: int | None = None, seed: int = 0):
    """(train, test or None) ImageSets of the shard stage, each a seeded sample of at most `max_images` images
    streamed from the shards (the whole split when it is smaller), so the stage's memory and time do not grow with
    the dataset; its stats.json says whether there is a test split."""
    if max_images is not None and max_images < 1:
        raise TokenforgeError(f"--max-images {max_images}: must be at least 1")
    train = shards.sample_split(shard_dir, "train", max_images, seed)
    test = shards.sample_split(shard_dir, "test", max_images, seed) if shards.split_count(shard_dir, "test") else None
    if test is None:
        log.warning("%s: no test split; reporting reconstruction on the train split", shard_dir)
    return train, test


# ---------------------------------------------------------------------------------------------- pruning


def encode_all(model: VQTokenizer, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Code ids (N, h, w) int64 of every image, encoded in batches."""
    parts = [model.encode(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, *model.config["grid"]), dtype=np.int64)


def prune_to_used(model: VQTokenizer, images: np.ndarray, prune: bool = True) -> dict[str, float]:
    """Prune `model` (trained, not yet pruned) to the codes encoding `images` uses; return the usage stats.

    codebook_usage and used_codes count the trained codes in use; perplexity is that of the new ids (a
    renumbering, so the same as before pruning). With prune=False every code is kept.
    """
    trained = trained_size(model.config)
    ids = encode_all(model, images)
    kept = np.unique(ids) if prune else np.arange(trained)
    model.prune(kept)
    used = code_stats(ids, trained)
    pruned = code_stats(np.searchsorted(kept, ids), len(kept))
    return {
        "codebook_usage": used["codebook_usage"],
        "used_codes": used["used_codes"],
        "perplexity": pruned["perplexity"],
        "codebook_size": len(kept),
        "trained_codebook_size": trained,
    }


# ---------------------------------------------------------------------------------------------- stats


def reconstruction_mse(model: VQTokenizer, images: np.ndarray, batch_size: int = 512) -> float:
    """Mean squared error of decode(encode(x)) against x, both in [0,1], over all pixels."""
    total, count = 0.0, 0
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        recon = model.decode(model.encode(batch))
        total += float((recon - to_float(batch)).pow(2).sum())
        count += recon.numel()
    if count == 0:
        raise TokenforgeError("images: no images to evaluate the tokenizer on")
    return total / count


def scene_color_recovery(model: VQTokenizer, image_set, batch_size: int = 512) -> dict[str, float]:
    """Whether the objects' colours survive tokenization, on images that carry scene records (the `scenes`
    source): scene_color_recovery, the share of their objects whose colour decode(encode(image)) shows
    (data.sources.scenes.scene_color_hits); scene_color_recovery_original, the same on the images themselves
    (about 1: it checks the check); scene_color_objects, how many objects. {} without scenes or RGB images."""
    from tokenforge.data.sources.scenes import scene_color_hits

    records, images = getattr(image_set, "texts", None), image_set.images  # an ImageSet; stand-ins may lack texts
    if records is None or len(records) != len(images) or images.shape[-1] != 3:
        return {}
    if not any((r or {}).get("scene") for r in records):
        return {}
    recovered = original = total = 0
    for i in range(0, len(images), batch_size):
        batch, texts = images[i : i + batch_size], records[i : i + batch_size]
        recon = model.decode(model.encode(batch)).permute(0, 2, 3, 1).numpy()
        right, n = scene_color_hits(texts, recon)
        recovered, original, total = recovered + right, original + scene_color_hits(texts, batch / 255.0)[0], total + n
    if total == 0:
        return {}
    return {"scene_color_recovery": recovered / total, "scene_color_recovery_original": original / total,
            "scene_color_objects": total}  # fmt: skip


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of images in [0,1]."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def code_stats(ids: np.ndarray, codebook_size: int) -> dict[str, float]:
    """How much of the codebook `ids` use: fraction and count of codes used, perplexity of their frequencies."""
    counts = np.bincount(np.asarray(ids).ravel(), minlength=codebook_size).astype(np.float64)
    freq = counts / max(counts.sum(), 1.0)
    nonzero = freq[freq > 0]
    return {
        "codebook_usage": float((counts > 0).mean()),
        "used_codes": int((counts > 0).sum()),
        "perplexity": float(np.exp(-(nonzero * np.log(nonzero)).sum())),
    }


# ---------------------------------------------------------------------------------------------- grid


def reconstruction_grid(model: VQTokenizer, images: np.ndarray) -> np.ndarray:
    """uint8 (H', W', C) picture: `images` (uint8 NHWC) in a row on top, their reconstructions below.

    Each image is scaled up by nearest neighbour to at least GRID_TILE px, so 8x8 digits stay visible;
    2 px grey gaps separate them.
    """
    recon = model.decode(model.encode(images)).permute(0, 2, 3, 1).mul(255).round().clamp(0, 255)
    recon = recon.to(torch.uint8).numpy()
    n, h, w, c = images.shape
    scale, gap = max(1, -(-GRID_TILE // max(h, w))), 2
    th, tw = h * scale, w * scale
    canvas = np.full((2 * th + 3 * gap, n * (tw + gap) + gap, c), 128, dtype=np.uint8)
    for row, batch in enumerate((images, recon)):
        y = gap + row * (th + gap)
        for i, image in enumerate(batch):
            x = gap + i * (tw + gap)
            canvas[y : y + th, x : x + tw] = image.repeat(scale, axis=0).repeat(scale, axis=1)
    return canvas


def save_reconstruction_grid(model: VQTokenizer, image_set, path: Path) -> None:
    """reconstructions.png of the first GRID_IMAGES images of `image_set` by key (the caller makes it atomic)."""
    first = sorted(range(len(image_set.keys)), key=image_set.keys.__getitem__)[:GRID_IMAGES]
    canvas = reconstruction_grid(model, image_set.images[first])
    Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas).save(path, format="PNG")
