"""A timm VisionTransformer that reads VQ token grids (or, as a baseline, pixel patches).

Every input is a grid of h x w *units*, one per ViT token:
- `input="tokens"`: a unit is a code id; it is looked up in the frozen tokenizer codebook (SeiT's
  input), giving a (D, h, w) embedding map;
- `input="pixels"`: a unit is one uint8 patch of `patch` x `patch` x C pixels (the same grid as the
  tokenizer's, so both models have the same size and sequence length).
The map goes through timm's patch embedding with patch size 1 (a linear projection per unit) and the
rest is timm's ViT unchanged.

`forward(units, positions)` also takes a *subset* of units with their grid positions: a replayed
memory sample is a short sequence of only its kept units, with their own positional embeddings, so
replay costs less compute than a full image. A float `units` tensor is taken as an already embedded
map (B, D, h, w) or sequence (B, k, D): token augmentations work on embeddings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokenforge.errors import TokenforgeError
from tokenforge.models import INPUTS


@dataclass
class ModelConfig:
    grid: tuple[int, int]  # unit grid (h, w): the tokenizer's token grid
    codebook_size: int  # tokens: codes in the codebook; pixels: 0
    code_dim: int  # features per unit: codebook vector size (tokens) or patch*patch*channels (pixels)
    num_classes: int
    embed_dim: int = 64  # width; tiny because digits grids are 4x4
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.0
    input: str = "tokens"
    patch: int = 1  # pixels only: patch side in pixels (the tokenizer's downsample factor)


class TokenViT(nn.Module):
    def __init__(self, config: ModelConfig, codebook: torch.Tensor | None = None):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if config.input not in INPUTS:
            raise TokenforgeError(f"input: unknown input {config.input!r}; expected one of {', '.join(INPUTS)}")
        self.config = config
        if config.input == "tokens":
            if codebook is None or tuple(codebook.shape) != (config.codebook_size, config.code_dim):
                shape = None if codebook is None else tuple(codebook.shape)
                raise TokenforgeError(
                    f"codebook shape {shape} does not match the model config ({config.codebook_size}, {config.code_dim})"
                )
            # Frozen: the codebook is the dataset's vocabulary, not a parameter to train. Standardised per
            # channel: VQ codes are small (std ~0.1 here), and at that scale the ViT sat at chance for ~70
            # steps before learning; standardised, it learns in ~20. Idempotent, so loading a saved model
            # (whose buffer is already standardised) gives the same buffer.
            codebook = codebook.detach().clone().float()
            mean, std = codebook.mean(0), codebook.std(0, unbiased=False).clamp_min(1e-6)
            self.register_buffer("codebook", (codebook - mean) / std)
        self.vit = VisionTransformer(
            img_size=tuple(config.grid),
            patch_size=1,
            in_chans=config.code_dim,
            num_classes=config.num_classes,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            drop_path_rate=config.drop_path,
            class_token=True,
            global_pool="token",
        )

    @property
    def num_tokens(self) -> int:
        return self.config.grid[0] * self.config.grid[1]

    def embed(self, units: torch.Tensor) -> torch.Tensor:
        """Units -> features (..., D): codebook vectors of ids, or pixel patches scaled to [0, 1].

        In the weights' dtype: under bf16 training the float inputs (pixels, augmented maps) are cast to it."""
        dtype = self.vit.cls_token.dtype
        if units.is_floating_point():
            return units.to(dtype)
        if self.config.input == "tokens":
            return self.codebook[units].to(dtype)
        return (units.float() / 255.0).to(dtype)

    def forward(self, units: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for full grids, or for unit subsets at `positions` (B, k).

        Full grids: ids (B, h, w), pixel patches (B, h, w, F) or an embedded map (B, D, h, w).
        Subsets: ids (B, k), patches (B, k, F) or embeddings (B, k, D).
        """
        if positions is None:
            emb = self.embed(units)
            if not units.is_floating_point():
                emb = emb.permute(0, 3, 1, 2)  # (B, D, h, w)
            return self.vit(emb)
        return self.vit.forward_head(self.forward_features_partial(units, positions))

    def features(self, units: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-logit features (B, embed_dim): the class token after the final norm, for full grids or subsets."""
        vit = self.vit
        if positions is None:
            emb = self.embed(units)
            if not units.is_floating_point():
                emb = emb.permute(0, 3, 1, 2)
            x = vit.forward_features(emb)
        else:
            x = self.forward_features_partial(units, positions)
        return vit.forward_head(x, pre_logits=True)

    def forward_features_partial(self, units: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """timm's forward_features for a subset of units; equals the full path when all are given."""
        vit = self.vit
        proj = vit.patch_embed.proj  # Conv2d with kernel 1 == a linear map per unit
        x = F.linear(self.embed(units), proj.weight.flatten(1), proj.bias)
        x = vit.patch_embed.norm(x)
        pos = vit.pos_embed[0]  # (prefix + h*w, E): class token first
        x = x + pos[vit.num_prefix_tokens + positions]
        cls = vit.cls_token.expand(x.shape[0], -1, -1) + pos[:1]
        x = vit.pos_drop(torch.cat([cls, x], dim=1))
        x = vit.norm_pre(x)
        if vit.grad_checkpointing and torch.is_grad_enabled():  # as timm's forward_features does (activation checkpointing)
            from timm.models import checkpoint_seq

            x = checkpoint_seq(vit.blocks, x)
        else:
            x = vit.blocks(x)
        return vit.norm(x)


def device_of(module: nn.Module) -> torch.device:
    """Where a model's weights are (a GPU after GPU training): its inputs go there."""
    return next(module.parameters(), torch.empty(0)).device


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """uint8 images (N, H, W, C) -> pixel units (N, H/patch, W/patch, patch*patch*C), still uint8."""
    n, height, width, c = images.shape
    if height % patch or width % patch:
        raise TokenforgeError(f"images of {height}x{width} do not split into {patch}x{patch} patches")
    x = images.reshape(n, height // patch, patch, width // patch, patch, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, height // patch, width // patch, patch * patch * c)


def save_model(model: TokenViT, directory: Path) -> None:
    """`model.safetensors` (weights, codebook included) + `model.json` (its config)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    (directory / "model.json").write_text(json.dumps(asdict(model.config), indent=2) + "\n")


def load_model(directory: Path) -> TokenViT:
    """Load a TokenViT saved by `save_model` (safetensors only: nothing is unpickled)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights = directory / "model.json", directory / "model.safetensors"
    for path in (cfg_path, weights):
        if not path.is_file():
            raise TokenforgeError(f"{path}: model file not found")
    try:
        raw = json.loads(cfg_path.read_text())
        config = ModelConfig(**{**raw, "grid": tuple(raw["grid"])})
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise TokenforgeError(f"{cfg_path}: not a tokenforge model config ({exc})") from None
    state = load_file(str(weights))
    model = TokenViT(config, state.get("codebook"))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TokenforgeError(f"{weights}: weights do not match {cfg_path.name} ({str(exc).splitlines()[0]})") from None
    return model.eval()
