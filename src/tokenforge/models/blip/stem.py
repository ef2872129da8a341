"""BLIP's vision embeddings for units (`UnitStem`), installed as the vision model's `embeddings` module
(`vision_model.embeddings`), and its initialisation from a pretrained checkpoint's patch embeddings.

The stem reads *units* instead of an image:

- `input="tokens"`: a unit is a code id; it is looked up in a frozen copy of the tokenizer codebook (a buffer,
  standardised per channel as TokenViT's, `models.vit.standardised`), projected by Linear(code_dim, width);
- `input="pixels"`: a unit is one patch of p*p*C pixel values (uint8 0..255, or float on the same scale), channel
  last as `models.vit.patchify` makes them: scaled to [0, 1], normalised per feature ((x - mean) / std, buffers),
  projected by Linear(p*p*C, width);

then plus a learned position embedding at the unit's row-major grid position, after a learned class embedding
(with its own position embedding, index 0): (B, 1 + N', width), for the full grid (N' = h*w) or any subset.

How units and positions reach the stem. BLIP's vision model takes only `pixel_values` and hands it, untouched, to
`self.embeddings(pixel_values, interpolate_pos_encoding=...)` (read in transformers 5.x: neither
`BlipVisionModel.forward` nor its `merge_with_config_defaults` / `capture_outputs` decorators cast or inspect it;
only `BlipVisionEmbeddings.forward`, which we replace, did). So `BlipModel.pack` packs both into one tensor passed
as `pixel_values`: tokens -> (B, N', 2) int64 [id, position]; pixels -> (B, N', F + 1) float32 [features...,
position] (exact: uint8 values and positions < 2**24 are exact in float32). The stem unpacks it. The same packed
tensor works in our calls and in HF's own `hf(...)` / `hf.generate(...)` (tested); no state is set on the stem.

The stem's Linear is initialised as HF initialises Linears (normal 0.02, zero bias). From a checkpoint
(`init_stem_from`, `models.blip.store`): the class embedding is the checkpoint's, the unit position embeddings are
the checkpoint's patch position embeddings resized (bicubic, as HF's `interpolate_pos_encoding`) to the unit grid
(copied when the sizes match); pixels whose units are the checkpoint's patches (patch_features == 3 * patch_size
** 2) take the patch-embedding convolution's weights reordered to our channel-last patch layout, with BLIP's image
normalisation (CLIP mean / std, per channel).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenforge.errors import TokenforgeError
from tokenforge.models.blip.settings import BlipSettings
from tokenforge.models.vit import standardised

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # BLIP's image processor normalisation (OpenAI CLIP's)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class UnitStem(nn.Module):
    """BLIP's vision embeddings for units: (packed units, positions) -> (B, 1 + N', width), class token first.

    Installed as `vision_model.embeddings`; `forward` takes the packed tensor (`BlipModel.pack`) as `pixel_values`."""

    def __init__(self, settings: BlipSettings, width: int, codebook: torch.Tensor | None = None):
        super().__init__()
        self.kind = settings.input
        self.grid = settings.grid
        if self.kind == "tokens":
            if codebook is None or tuple(codebook.shape) != (settings.num_codes, settings.code_dim):
                shape = None if codebook is None else tuple(codebook.shape)
                raise TokenforgeError(
                    f"blip: codebook shape {shape} does not match the settings ({settings.num_codes}, {settings.code_dim})"
                )
            self.register_buffer("codebook", standardised(codebook))
            features = settings.code_dim
        else:
            features = settings.patch_features
            self.register_buffer("pixel_mean", torch.full((features,), 0.5))
            self.register_buffer("pixel_std", torch.full((features,), 0.5))
        self.features = features
        self.proj = nn.Linear(features, width)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, width))
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + settings.units, width))  # class position first
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        nn.init.trunc_normal_(self.class_embedding, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        self.tap: list[torch.Tensor] | None = None  # relevance: unit embeddings of the next forwards, as grad leaves

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed tensor -> (units, positions): ids (B, N) or features (B, N, F) float, positions (B, N) int64."""
        if self.kind == "tokens":
            if packed.is_floating_point() or packed.dim() != 3 or packed.shape[-1] != 2:
                raise TokenforgeError(f"blip stem: expected packed ids (B, N, 2) int64, got {tuple(packed.shape)} {packed.dtype}")
            return packed[..., 0], packed[..., 1]
        if packed.dim() != 3 or packed.shape[-1] != self.features + 1:
            raise TokenforgeError(f"blip stem: expected packed patches (B, N, {self.features + 1}), got {tuple(packed.shape)}")
        return packed[..., :-1], packed[..., -1].round().long()

    def embed(self, units: torch.Tensor) -> torch.Tensor:
        """Units -> projected embeddings (B, N, width), no positions."""
        dtype = self.proj.weight.dtype
        if self.kind == "tokens":
            x = self.codebook[units]
        else:
            x = (units.float() / 255.0 - self.pixel_mean) / self.pixel_std
        return self.proj(x.to(dtype))

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        units, positions = self.unpack(pixel_values)
        emb = self.embed(units)
        if self.tap is not None:  # relevance: a leaf to take gradients w.r.t. (parameters get none)
            emb = emb.detach().requires_grad_(True)
            self.tap.append(emb)
        pos = self.position_embedding[0].to(emb.dtype)
        x = emb + pos[1 + positions]
        cls = (self.class_embedding[0] + pos[:1]).to(emb.dtype).expand(emb.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


@torch.no_grad()
def init_stem_from(stem: UnitStem, old: nn.Module, settings: BlipSettings) -> None:
    """The stem's class and position embeddings (and, pixels with the checkpoint's patch size, its Linear and the
    normalisation) from a checkpoint's BlipVisionEmbeddings."""
    stem.class_embedding.copy_(old.class_embedding)
    table = old.position_embedding  # (1, 1 + g*g, D), class position first
    patches = table.shape[1] - 1
    side = math.isqrt(patches)
    grid = table[0, 1:].reshape(side, side, -1) if side * side == patches else None
    h, w = settings.grid
    if grid is not None:
        if (side, side) != (h, w):
            grid = F.interpolate(grid.permute(2, 0, 1)[None].float(), size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
        stem.position_embedding[0, 0].copy_(table[0, 0])
        stem.position_embedding[0, 1:].copy_(grid.reshape(h * w, -1))
    conv = old.patch_embedding  # Conv2d(3, D, p, stride p)
    p = _pair(conv.kernel_size)
    if settings.input == "pixels" and conv.in_channels == 3 and settings.patch_features == 3 * p[0] * p[1]:
        stem.proj.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1))  # (p, p, C) order
        stem.proj.bias.copy_(conv.bias)
        channel = torch.arange(settings.patch_features) % 3
        stem.pixel_mean.copy_(torch.tensor(CLIP_MEAN)[channel])
        stem.pixel_std.copy_(torch.tensor(CLIP_STD)[channel])
