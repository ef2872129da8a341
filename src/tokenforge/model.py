"""A timm VisionTransformer that reads VQ token grids instead of pixels.

Each token id is looked up in the frozen tokenizer codebook (SeiT's input), the (D, h, w) embedding
map goes through timm's patch embedding with patch size 1 (a per-token linear projection), and the
rest is timm's ViT unchanged. `forward(ids, positions)` also takes a *subset* of tokens with their
grid positions: a replayed memory sample is a short sequence of only its kept tokens, with their own
positional embeddings, so replay costs less compute than a full image.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TokenforgeError


@dataclass
class ModelConfig:
    grid: tuple[int, int]  # token grid (h, w) from the tokenizer
    codebook_size: int
    code_dim: int
    num_classes: int
    embed_dim: int = 64  # width; tiny because digits grids are 4x4
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.0


class TokenViT(nn.Module):
    def __init__(self, config: ModelConfig, codebook: torch.Tensor):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        if tuple(codebook.shape) != (config.codebook_size, config.code_dim):
            raise TokenforgeError(
                f"codebook shape {tuple(codebook.shape)} does not match the model config "
                f"({config.codebook_size}, {config.code_dim})"
            )
        self.config = config
        # Frozen: the codebook is the dataset's vocabulary, not a parameter to train.
        self.register_buffer("codebook", codebook.detach().clone().float())
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

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for token grids `ids` (B, h, w), or for token subsets `ids` (B, k) at `positions` (B, k)."""
        if positions is None:
            emb = self.codebook[ids].permute(0, 3, 1, 2)  # (B, D, h, w)
            return self.vit(emb)
        return self.vit.forward_head(self.forward_features_partial(ids, positions))

    def forward_features_partial(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """timm's forward_features for a subset of tokens; equals the full path when all are given."""
        vit = self.vit
        proj = vit.patch_embed.proj  # Conv2d with kernel 1 == a linear map per token
        x = F.linear(self.codebook[ids], proj.weight.flatten(1), proj.bias)
        x = vit.patch_embed.norm(x)
        pos = vit.pos_embed[0]  # (prefix + h*w, E): class token first
        x = x + pos[vit.num_prefix_tokens + positions]
        cls = vit.cls_token.expand(x.shape[0], -1, -1) + pos[:1]
        x = vit.pos_drop(torch.cat([cls, x], dim=1))
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return vit.norm(x)


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
    model = TokenViT(config, state["codebook"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TokenforgeError(f"{weights}: weights do not match {cfg_path.name} ({str(exc).splitlines()[0]})") from None
    return model.eval()
