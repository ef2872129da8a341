"""Token-space data augmentations for training on VQ token grids (SeiT's Token-EDA, SeiT++'s ColorAdapt).

A batch arrives as code ids (B, h, w) and class targets (B, C). `TokenAugmenter` runs two phases:

  augment_ids:  synonym replacement -> square swap              (ids stay ids in [0, K))
  embed:        codebook lookup -> random resized crop -> horizontal flip
                -> embedding noise -> CutMix -> ColorAdapt     (embedding maps (B, D, h, w), soft targets)

With augment.tokenadapt_p (SeiT++'s TokenAdapt, a frozen adapter pair f, g from `tokenforge tokenadapt`, see
tokenforge.tokenizer.adapt) a batch chosen with that probability is split in two halves: the first half takes the
path above; the second goes f -> per-sample flip, rotation, translation, shear, resized crop on f's map -> Mixup
(alpha 0.8) or CutMix (alpha 1.0), one of the two with p 0.5, targets mixed alike -> g -> hard argmax -> codebook
lookup (this augmenter's codebook: the model's standardised one, the space the model embeds ids in) -> embedding
noise -> ColorAdapt. Batches not chosen, and every batch when tokenadapt_p is 0, take the first path unchanged.

The crop resamples bilinearly, so a cell of the result is a convex mixture of up to four codewords: the
same as SeiT's crop of the one-hot map followed by the lookup as a matmul (both steps are linear and act
on the channels independently, so they commute), without building a (B, K, h, w) one-hot.

Every augmentation is switched on by its probability in `AugmentConfig` (all 0 by default, which is the
identity: `embed` then returns exactly `codebook[ids].permute(0, 3, 1, 2)` and the targets unchanged).
Each one is a small pure function here that takes a `torch.Generator` on the tensors' device (its random draws,
shared with TokenAdapt's transforms, are data/draws.py); the class owns one generator, on the codebook's device (ids are moved there), seeded by its seed, so the same seed
and the same inputs give the same outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from tokenforge.data.augment_config import AugmentConfig
from tokenforge.data import draws
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json

# Added to the variance before the square root so a constant channel does not divide by zero.
COLOR_EPS = 1e-5
# TokenAdapt's half of a batch: timm's Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5) of the official code.
TOKENADAPT_MIXUP_ALPHA = 0.8
TOKENADAPT_CUTMIX_ALPHA = 1.0
TOKENADAPT_SWITCH_P = 0.5


def load_synonyms(path: str | Path, k: int) -> Tensor:
    """(K, k) int64 from a synonyms JSON {"0": [ids...], ...} (`tokenforge synonyms`, SeiT's file): first k of each."""
    if k < 1:
        raise TokenforgeError(f"augment.synonym_k: must be an integer >= 1, got {k}")
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise TokenforgeError(f"{path}: expected a non-empty mapping of code id -> list of similar ids")
    size = len(data)
    if sorted(data) != sorted(str(i) for i in range(size)):
        raise TokenforgeError(f"{path}: keys must be the code ids 0..{size - 1}, each once")
    rows = []
    for i in range(size):
        row = data[str(i)]
        if not isinstance(row, list) or not all(isinstance(j, int) and not isinstance(j, bool) for j in row):
            raise TokenforgeError(f"{path}: code {i}: expected a list of integer ids")
        if len(row) < k:
            raise TokenforgeError(f"{path}: code {i}: has {len(row)} synonyms, {k} needed (synonym_k)")
        bad = [j for j in row[:k] if not 0 <= j < size]
        if bad:
            raise TokenforgeError(f"{path}: code {i}: id {bad[0]} out of range [0, {size})")
        rows.append(row[:k])
    return torch.tensor(rows, dtype=torch.int64)


# --------------------------------------------------------------------------- on code ids


def synonym_replace(ids: Tensor, synonyms: Tensor, p: float, token_p: float, generator: torch.Generator) -> Tensor:
    """Each sample with prob. p: each of its tokens with prob. token_p becomes a random one of its synonyms.

    `synonyms` (K, k): row i lists the codes to draw code i's replacement from.
    """
    chosen = draws.chosen(len(ids), p, generator)
    replace = torch.rand(ids.shape, generator=generator, device=generator.device) < token_p
    pick = torch.randint(synonyms.shape[1], ids.shape, generator=generator, device=generator.device)
    replace &= chosen[:, None, None]
    return torch.where(replace, synonyms[ids, pick], ids)


def square_side(height: int, width: int, fraction: float) -> int:
    """Side of the swapped squares: `fraction` of the shorter grid side, at least 1 token, and small enough
    that two of them fit side by side without overlapping (0 when the grid is a single token)."""
    side = max(1, round(fraction * min(height, width)))
    return min(side, min(height, width), max(height, width) // 2)


def _overlapping(size: int, side: int, device) -> Tensor:
    """(size - side + 1,) int64: for each square start along one axis, how many starts overlap it (itself too)."""
    start = torch.arange(size - side + 1, device=device)
    return torch.clamp(start + side - 1, max=size - side) - torch.clamp(start - side + 1, min=0) + 1


def square_pairs(n: int, height: int, width: int, side: int, generator: torch.Generator) -> Tensor:
    """(n, 4) int64 corners (y1, x1, y2, x2) of two non-overlapping side x side squares, uniform over all pairs.

    The first corner is drawn with weight = its number of valid partners, then the second uniformly among
    those partners, so every ordered pair is equally likely without listing all pairs.
    """
    device = generator.device
    starts_y, starts_x = torch.arange(height - side + 1, device=device), torch.arange(width - side + 1, device=device)
    ys, xs = torch.meshgrid(starts_y, starts_x, indexing="ij")
    corners = torch.stack([ys.flatten(), xs.flatten()], dim=1)  # (P, 2)
    # Squares overlap iff they overlap along both axes, so the overlap counts multiply.
    overlaps = (_overlapping(height, side, device)[:, None] * _overlapping(width, side, device)[None, :]).flatten()
    partners = (len(corners) - overlaps).double()
    first = corners[torch.multinomial(partners, n, replacement=True, generator=generator)]  # (n, 2)
    apart = ((first[:, None, :] - corners[None, :, :]).abs() >= side).any(dim=2)  # (n, P)
    second = corners[torch.multinomial(apart.double(), 1, generator=generator).squeeze(1)]
    return torch.cat([first, second], dim=1)


def swap_squares(ids: Tensor, p: float, fraction: float, generator: torch.Generator) -> Tensor:
    """Each sample with prob. p: swap the contents of two non-overlapping squares of its grid.

    The pair of squares is uniform over all valid pairs; every sample keeps its multiset of ids.
    """
    batch, height, width = ids.shape
    side = square_side(height, width, fraction)
    chosen = draws.chosen(batch, p, generator).nonzero().flatten()
    if side == 0 or len(chosen) == 0:
        return ids
    y1, x1, y2, x2 = square_pairs(len(chosen), height, width, side, generator).T
    # Flat offsets of one square's cells from its corner; each square's cells map onto the other's.
    dy, dx = torch.meshgrid(torch.arange(side, device=ids.device), torch.arange(side, device=ids.device), indexing="ij")
    offsets = (dy * width + dx).flatten()
    first = (y1 * width + x1)[:, None] + offsets  # (n, side * side)
    second = (y2 * width + x2)[:, None] + offsets
    source = torch.arange(height * width, device=ids.device).repeat(len(chosen), 1)
    source.scatter_(1, first, second)
    source.scatter_(1, second, first)
    out = ids.clone().view(batch, -1)
    out[chosen] = out[chosen].gather(1, source)
    return out.view(batch, height, width)


# ------------------------------------------------------------------------- on float maps


def _crop_resize(maps: Tensor, boxes: Tensor) -> Tensor:
    """Bilinearly resample each map's box (top, left, height, width fractions) back to the full (h, w) size.

    Sampling points are the output cells' centres mapped into the box (align_corners=False convention), so
    the full box (0, 0, 1, 1) reproduces the map exactly.
    """
    batch, _, height, width = maps.shape
    top, left, box_h, box_w = boxes.to(maps.device, torch.float64).T[:, :, None]
    centres_y = torch.arange(height, device=maps.device, dtype=torch.float64) + 0.5
    centres_x = torch.arange(width, device=maps.device, dtype=torch.float64) + 0.5
    # Source coordinates in cells (cell j's centre at j) of every output row and column: the box spans
    # box_h * height cells over `height` output cells, so one output cell steps box_h source cells.
    rows = top * height + centres_y * box_h - 0.5
    cols = left * width + centres_x * box_w - 0.5
    return _resample(maps, rows.clamp(0, height - 1), cols.clamp(0, width - 1))


def _interpolation(coords: Tensor, size: int) -> Tensor:
    """(B, n_out, size) float64 weights of bilinear interpolation at fractional positions `coords` (B, n_out)."""
    below = coords.floor().clamp(max=size - 1)
    frac = coords - below
    above = (below + 1).clamp(max=size - 1)
    weights = torch.zeros(*coords.shape, size, dtype=torch.float64, device=coords.device)
    weights.scatter_add_(2, below.long()[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, above.long()[..., None], frac[..., None])
    return weights


def _resample(maps: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """maps (B, C, h, w) sampled at rows (B, h') x cols (B, w'), separably: Wy @ map @ Wx^T."""
    wy = _interpolation(rows, maps.shape[2]).to(maps.dtype)
    wx = _interpolation(cols, maps.shape[3]).to(maps.dtype)
    return torch.einsum("bih,bchw,bjw->bcij", wy, maps, wx)


def random_resized_crop(maps: Tensor, p: float, scale: tuple[float, float], generator: torch.Generator) -> Tensor:
    """Each sample with prob. p: a random resized crop of its (B, C, h, w) map, resized back to (h, w)."""
    chosen = draws.chosen(len(maps), p, generator)
    boxes = draws.crop_boxes(len(maps), scale, generator)
    if not chosen.any():
        return maps
    out = maps.clone()
    out[chosen] = _crop_resize(maps[chosen], boxes[chosen])
    return out


def _flip(maps: Tensor, mask: Tensor) -> Tensor:
    """Flip the (B, C, h, w) maps of the samples where `mask` (B,) is true left to right."""
    return torch.where(mask.to(maps.device)[:, None, None, None], maps.flip(-1), maps)


def horizontal_flip(maps: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each sample with prob. p: flip its map left to right."""
    return _flip(maps, draws.chosen(len(maps), p, generator))


def embedding_noise(emb: Tensor, p: float, std: float, channel_std: Tensor, generator: torch.Generator) -> Tensor:
    """Each sample with prob. p: add a per-channel offset and per-element noise, both N(0, (std * channel_std)^2).

    `channel_std` (D,) is the codebook's spread per channel, so the noise is on the embeddings' own scale.
    """
    chosen = draws.chosen(len(emb), p, generator).nonzero().flatten()
    shape = (len(chosen), *emb.shape[1:])
    offset = torch.randn(*shape[:2], 1, 1, generator=generator, device=generator.device)
    element = torch.randn(shape, generator=generator, device=generator.device)
    scale = (std * channel_std.to(emb))[None, :, None, None]
    out = emb.clone()
    out[chosen.to(emb.device)] += scale * (offset + element).to(emb)
    return out


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of a box of about (1 - lam) of the grid, centred uniformly, clipped to the grid."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = round(height * cut), round(width * cut)
    cy = int(torch.randint(height, (1,), generator=generator, device=generator.device))
    cx = int(torch.randint(width, (1,), generator=generator, device=generator.device))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return y1, y2, x1, x2


def cutmix(emb: Tensor, targets: Tensor, p: float, alpha: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """With prob. p (once per batch): paste a box of each sample's partner into it; targets mixed by pasted area.

    lam ~ Beta(alpha, alpha) sets the box size; the targets use the area actually pasted after clipping.
    """
    batch, _, height, width = emb.shape
    if batch < 2 or not bool(draws.chosen(1, p, generator)):
        return emb, targets
    partner = draws.partners(batch, generator).to(emb.device)
    y1, y2, x1, x2 = cutmix_box(height, width, draws.beta(alpha, generator), generator)
    out = emb.clone()
    out[:, :, y1:y2, x1:x2] = emb[partner, :, y1:y2, x1:x2]
    pasted = (y2 - y1) * (x2 - x1) / (height * width)
    return out, targets * (1.0 - pasted) + targets[partner] * pasted


def mixup_or_cutmix(maps: Tensor, targets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Once per batch, as timm's Mixup of TokenAdapt's half: with p 0.5 CutMix (lam ~ Beta(1, 1)), else Mixup
    (lam ~ Beta(0.8, 0.8)) with each sample's partner; targets mixed by the partner's share."""
    batch, _, height, width = maps.shape
    if batch < 2:
        return maps, targets
    partner = draws.partners(batch, generator).to(maps.device)
    use_cutmix = bool(draws.chosen(1, TOKENADAPT_SWITCH_P, generator))
    lam = draws.beta(TOKENADAPT_CUTMIX_ALPHA if use_cutmix else TOKENADAPT_MIXUP_ALPHA, generator)
    if use_cutmix:
        y1, y2, x1, x2 = cutmix_box(height, width, lam, generator)
        out = maps.clone()
        out[:, :, y1:y2, x1:x2] = maps[partner, :, y1:y2, x1:x2]
        share = (y2 - y1) * (x2 - x1) / (height * width)
    else:
        out, share = lam * maps + (1.0 - lam) * maps[partner], 1.0 - lam
    return out, targets * (1.0 - share) + targets[partner] * share


def _channel_stats(emb: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and std over the grid, each (B, D, 1, 1)."""
    mean = emb.mean(dim=(2, 3), keepdim=True)
    # Two passes instead of Tensor.var: same result, and several times faster on a CPU.
    var = (emb - mean).square().mean(dim=(2, 3), keepdim=True)
    std = torch.sqrt(var + COLOR_EPS)
    return mean, std


def color_adapt(emb: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Each sample with prob. p: normalise its map per channel and give it its partner's channel mean/std."""
    chosen = draws.chosen(len(emb), p, generator)
    partner = draws.partners(len(emb), generator)
    if len(emb) < 2 or not chosen.any():
        return emb
    chosen, partner = chosen.nonzero().flatten().to(emb.device), partner.to(emb.device)
    mean, std = _channel_stats(emb)
    out = emb.clone()
    # Statistics of the maps before this step, so a partner that is itself adapted still lends its own.
    source = partner[chosen]
    out[chosen] = (emb[chosen] - mean[chosen]) / std[chosen] * std[source] + mean[source]
    return out


# ------------------------------------------------------------------------------- the class


class TokenAugmenter:
    """Applies the augmentations switched on in `config` to batches of ids, in SeiT's order."""

    def __init__(self, config: AugmentConfig, codebook: Tensor, synonyms: Tensor | None, seed: int, adapter=None):
        if codebook.ndim != 2:
            raise TokenforgeError(f"codebook: expected a (codes, dim) matrix, got shape {tuple(codebook.shape)}")
        self.config = config
        self.codebook = codebook.detach().float()
        self.synonyms = _check_synonyms(synonyms, config, len(codebook)) if config.synonym_p > 0 else None
        self.adapter = _check_adapter(adapter, self.codebook) if config.tokenadapt_p > 0 else None
        # Noise is relative to each embedding channel's spread over the codebook.
        self.channel_std = self.codebook.std(dim=0, unbiased=False)
        self.generator = torch.Generator(device=self.codebook.device)
        self.generator.manual_seed(seed)

    @property
    def active(self) -> bool:
        return self.config.active

    def augment_ids(self, ids: Tensor) -> Tensor:
        """Synonym replacement, then square swap: (B, h, w) ids in [0, K) -> same shape, still in [0, K)."""
        ids = self._check_ids(ids)
        cfg, gen = self.config, self.generator
        if cfg.synonym_p > 0:
            ids = synonym_replace(ids, self.synonyms.to(ids.device), cfg.synonym_p, cfg.synonym_token_p, gen)
        if cfg.swap_p > 0:
            ids = swap_squares(ids, cfg.swap_p, cfg.swap_fraction, gen)
        return ids

    def embed(self, ids: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(B, h, w) ids and (B, C) targets -> (B, D, h, w) float embedding maps and (B, C) float targets."""
        ids = self._check_ids(ids)
        if targets.ndim != 2 or len(targets) != len(ids):
            shape = tuple(targets.shape)
            raise TokenforgeError(f"augment: targets must be (batch, classes) for {len(ids)} samples, got {shape}")
        targets = targets.float()
        if self.config.tokenadapt_p > 0 and len(ids) > 1 and bool(draws.chosen(1, self.config.tokenadapt_p, self.generator)):
            base = len(ids) - len(ids) // 2  # the first half keeps the path below, the second goes through TokenAdapt
            emb, mixed = self._embed(ids[:base], targets[:base])
            adapted, adapted_targets = self._tokenadapt(ids[base:], targets[base:])
            return torch.cat([emb, adapted]), torch.cat([mixed, adapted_targets])
        return self._embed(ids, targets)

    def _embed(self, ids: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """SeiT's path: lookup -> crop -> flip -> noise -> CutMix -> ColorAdapt."""
        cfg, gen = self.config, self.generator
        codebook = self.codebook.to(ids.device)
        # Crop and flip act on the embedding map: both are the same linear resampling of every channel, so
        # they commute with the codebook lookup (a matmul of the one-hot map). The result equals SeiT's
        # one-hot -> crop -> matmul (soft code mixtures) without a (B, K, h, w) one-hot, K/D times less work.
        emb = codebook[ids].permute(0, 3, 1, 2)
        if cfg.crop_p > 0:
            emb = random_resized_crop(emb, cfg.crop_p, cfg.crop_scale, gen)
        if cfg.flip_p > 0:
            emb = horizontal_flip(emb, cfg.flip_p, gen)
        if cfg.noise_p > 0:
            emb = embedding_noise(emb, cfg.noise_p, cfg.noise_std, self.channel_std, gen)
        if cfg.cutmix_p > 0:
            emb, targets = cutmix(emb, targets, cfg.cutmix_p, cfg.cutmix_alpha, gen)
        if cfg.coloradapt_p > 0:
            emb = color_adapt(emb, cfg.coloradapt_p, gen)
        return emb, targets

    @torch.no_grad()
    def _tokenadapt(self, ids: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """TokenAdapt's path: f -> spatial transforms (per sample) -> Mixup/CutMix -> g -> argmax -> lookup -> noise
        -> ColorAdapt. The colour steps come after g, whose hard argmax would otherwise undo them."""
        from tokenforge.tokenizer.adapt import apply_spatial, draw_spatial

        cfg, gen = self.config, self.generator
        maps = self.adapter.f(ids)
        maps = apply_spatial(maps, draw_spatial(len(ids), tuple(maps.shape[2:]), gen))
        maps, targets = mixup_or_cutmix(maps, targets, gen)
        emb = self.codebook.to(ids.device)[self.adapter.g(maps).argmax(1)].permute(0, 3, 1, 2)
        if cfg.noise_p > 0:
            emb = embedding_noise(emb, cfg.noise_p, cfg.noise_std, self.channel_std, gen)
        if cfg.coloradapt_p > 0:
            emb = color_adapt(emb, cfg.coloradapt_p, gen)
        return emb, targets

    def _check_ids(self, ids: Tensor) -> Tensor:
        """`ids` as int64 after checking it is a (B, h, w) integer grid of codes of this codebook."""
        if ids.ndim != 3 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            got = f"{ids.dtype} {tuple(ids.shape)}"
            raise TokenforgeError(f"augment: ids must be an integer (batch, h, w) grid, got {got}")
        ids = ids.to(self.codebook.device, torch.int64)  # where the generator draws
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.codebook)):
            raise TokenforgeError(f"augment: ids out of range [0, {len(self.codebook)}) of the codebook")
        return ids


def _check_adapter(adapter, codebook: Tensor):
    """The frozen TokenAdapt pair, made for this codebook, on its device (augment.tokenadapt_p > 0 needs one)."""
    if adapter is None:
        raise TokenforgeError("augment.tokenadapt_p: > 0 needs a TokenAdapt adapter (--adapter, from `tokenforge tokenadapt`)")
    from tokenforge.tokenizer.adapt import check_codebook

    check_codebook(adapter, codebook, "--adapter")
    return adapter.to(codebook.device).eval().requires_grad_(False)


def _check_synonyms(synonyms: Tensor | None, config: AugmentConfig, size: int) -> Tensor:
    """The first synonym_k columns of a (K, >= k) synonym table matching a K-code codebook."""
    if synonyms is None:
        raise TokenforgeError("augment.synonym_p: > 0 needs a synonyms table (tokenforge synonyms)")
    if synonyms.ndim != 2 or synonyms.shape[0] != size or synonyms.shape[1] < config.synonym_k:
        raise TokenforgeError(
            f"synonyms: expected ({size}, >= {config.synonym_k}) for a {size}-code codebook, "
            f"got {tuple(synonyms.shape)}"
        )
    synonyms = synonyms[:, : config.synonym_k].long()
    if int(synonyms.min()) < 0 or int(synonyms.max()) >= size:
        raise TokenforgeError(f"synonyms: ids out of range [0, {size})")
    return synonyms
