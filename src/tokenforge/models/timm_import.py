"""A pixel TokenViT from a local timm ViT checkpoint: `load_timm`.

For a start that is not a random initialisation on `input: pixels`: a user with, say, a timm ViT-B/16
checkpoint (`vit_base_patch16_224`, a `model.safetensors` or weights-only `.pt`/`.bin` file) and shards at image
size 224 with tokenizer downsample 16 (a 14x14 grid) gets a TokenViT whose units are the ViT's own 16x16 patches:

    model = load_timm("vit_base_patch16_224", Path("model.safetensors"), grid=(14, 14), patch=16, channels=3,
                      num_classes=10)

Nothing is downloaded: timm builds the architecture only (`pretrained=False`, `model_kwargs` passed on to
`timm.create_model`), the file is loaded into it with strict key and shape checking (the classifier head,
`head.*`, is dropped), and its weights are copied onto a TokenViT (patch size 1 on `patch` x `patch` x C units,
see `models.vit`). The head is a fresh one for `num_classes` (none for 0).

What is exact (the TokenViT computes what the timm model computes, up to float rounding):
- the patch projection: timm's Conv2d (E, C, p, p) is permuted to the unit order of `patchify` (patch row,
  patch column, channel) and flattened to TokenViT's 1x1 Conv2d (E, p*p*C);
- the input normalisation: TokenViT feeds pixels as x/255, without mean/std, whereas the checkpoint expects
  (x/255 - mean_c)/std_c with the mean and std of the model's `pretrained_cfg`; these are folded into the
  projection (W' = W/std_c, b' = b - sum W*mean_c/std_c), which is exact. A model without a mean/std in its
  config is taken as trained on x/255;
- the class token, register tokens (as `ModelConfig.prompts`), blocks and final norm: copied; positional
  embeddings when `grid` is the model's own patch grid (img_size / patch size; pass `img_size` in
  `model_kwargs` for a checkpoint at another size). `no_embed_class` models (positions for patches only) get
  zero positions for the prefix tokens, which is the same sum;
- `channels=1` from an RGB checkpoint: the projection summed over the colour channels (timm's
  `adapt_input_conv`), i.e. exactly the model on the grey image repeated into RGB.

What is approximate:
- positional embeddings on another grid: the patch part is resampled bicubically (timm's
  `resample_abs_pos_embed`, antialiased, as timm does for a new image size); the prefix tokens' are kept;
- other channel counts (2, 4, ...): `adapt_input_conv` repeats the RGB weights and scales them by 3/C.

What TokenViT cannot represent is an error naming the model and the part (layer scale, qk norm, a pre-norm, no
qkv bias, a different norm or activation, average or attention pooling, ...): TokenViT builds timm's
`VisionTransformer` with its defaults besides the sizes, class-token pooling and `TokenBlock`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from tokenforge.errors import TokenforgeError, one_line
from tokenforge.models.vit import ModelConfig, TokenViT

__all__ = ["load_timm"]

# what a hint says about a module TokenViT cannot represent, by the last part of its name
_HINTS = {
    "ls1": "layer scale (init_values)",
    "ls2": "layer scale (init_values)",
    "q_norm": "qk norm",
    "k_norm": "qk norm",
    "qkv": "qkv projection (qkv_bias)",
    "proj": "projection (proj_bias)",
    "norm_pre": "pre-norm",
    "fc_norm": "fc norm",
    "act": "MLP activation",
    "norm1": "norm layer",
    "norm2": "norm layer",
    "norm": "norm layer (final_norm)",
}


def load_timm(
    model_name: str,
    checkpoint: Path,
    *,
    grid: tuple[int, int],
    patch: int,
    channels: int,
    num_classes: int,
    model_kwargs: dict | None = None,
) -> TokenViT:
    """A pixel TokenViT on `grid` with the weights of a timm ViT checkpoint (module doc: what is exact).

    `model_name` and `model_kwargs` build the timm architecture (`timm.create_model(model_name,
    pretrained=False, num_classes=0, **model_kwargs)`); `checkpoint` is a `.safetensors` file or a weights-only
    torch file (a state dict, or a dict with one under "state_dict" or "model"). `patch` must be the model's
    patch size; `channels` the images' (1 or 3 from an RGB checkpoint). The head is new, for `num_classes`."""
    checkpoint = Path(checkpoint)
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or min(grid) < 1 or patch < 1 or channels < 1:
        raise TokenforgeError(f"load_timm: bad grid {grid}, patch {patch} or channels {channels}")
    vit = _timm_model(model_name, model_kwargs)
    _check_supported(model_name, vit, patch)
    config = ModelConfig(
        grid=grid,
        codebook_size=0,
        code_dim=patch * patch * channels,
        num_classes=num_classes,
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        num_heads=vit.blocks[0].attn.num_heads,
        mlp_ratio=_mlp_ratio(vit),
        input="pixels",
        patch=patch,
        prompts=vit.num_reg_tokens,
    )
    model = TokenViT(config)
    _check_same_modules(model_name, vit, model.vit)
    _load_checkpoint(vit, checkpoint, model_name)
    weights = _mapped_weights(model_name, vit, model.vit, grid, channels)
    model.vit.load_state_dict(weights, strict=True)
    return model


# --- the timm model ------------------------------------------------------------------------------


def _timm_model(model_name: str, model_kwargs: dict | None) -> nn.Module:
    """The architecture, never the pretrained weights (no download)."""
    import timm

    try:
        return timm.create_model(model_name, pretrained=False, num_classes=0, **(model_kwargs or {}))
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise TokenforgeError(f"timm model {model_name!r}: cannot build it: {one_line(err)}") from None


def _check_supported(model_name: str, vit: nn.Module, patch: int) -> None:
    """A plain timm VisionTransformer with class-token pooling, a learned position table and our patch size."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    if type(vit) is not VisionTransformer:
        kind = type(vit).__name__
        raise TokenforgeError(f"timm model {model_name!r} is a {kind}, not a plain timm VisionTransformer")
    if not vit.has_class_token or vit.global_pool != "token" or vit.attn_pool is not None:
        raise TokenforgeError(
            f"timm model {model_name!r} pools with {vit.global_pool!r} (class token: {vit.has_class_token}); "
            "TokenViT reads the class token (global_pool 'token')"
        )
    if not isinstance(vit.fc_norm, nn.Identity):
        raise TokenforgeError(f"timm model {model_name!r} has an fc_norm after pooling; TokenViT has a final norm only")
    if vit.pos_embed is None:
        raise TokenforgeError(f"timm model {model_name!r} has no learned positional embeddings; TokenViT needs them")
    sizes = tuple(vit.patch_embed.patch_size)
    if sizes != (patch, patch):
        raise TokenforgeError(
            f"timm model {model_name!r} has patch size {'x'.join(map(str, sizes))}, "
            f"the grid's patch is {patch}x{patch} "
            "(the tokenizer's downsample factor must equal the model's patch size)"
        )
    if not len(vit.blocks):
        raise TokenforgeError(f"timm model {model_name!r} has no blocks")
    for i, block in enumerate(vit.blocks):
        parts = {"": Block, ".attn": Attention, ".mlp": Mlp}
        for part, kind in parts.items():
            module = block.get_submodule(part[1:]) if part else block
            if type(module) is not kind:
                raise TokenforgeError(
                    f"timm model {model_name!r}: blocks.{i}{part} is a {type(module).__name__}; "
                    f"TokenViT has timm's {kind.__name__}"
                )


def _mlp_ratio(vit: nn.Module) -> float:
    """The MLP ratio that gives timm's hidden width back (int(dim * ratio) == hidden, whatever the rounding)."""
    dim, hidden = vit.embed_dim, vit.blocks[0].mlp.fc1.out_features
    ratio = hidden / dim
    return ratio if int(dim * ratio) == hidden else (hidden + 0.5) / dim


def _describe(module: nn.Module) -> str:
    """A module's kind and settings, with training-only regularisers (dropout, drop path) as identities."""
    from timm.layers import DropPath, PatchDropout

    from tokenforge.models.attention import TokenAttention, TokenBlock

    if isinstance(module, (nn.Identity, nn.Dropout, DropPath, PatchDropout)):
        return "Identity"
    if type(module) is TokenBlock:
        return "Block"
    if type(module) is TokenAttention:
        return "Attention"
    settings = module.extra_repr()
    return f"{type(module).__name__}({settings})" if settings else type(module).__name__


def _check_same_modules(model_name: str, vit: nn.Module, ours: nn.Module) -> None:
    """Module by module, the timm model and TokenViT's must match, bar the patch projection and the head."""
    skip = ("", "patch_embed.proj", "head")
    theirs = {name: _describe(m) for name, m in vit.named_modules() if name not in skip}
    mine = {name: _describe(m) for name, m in ours.named_modules() if name not in skip}
    for name in sorted(theirs.keys() | mine.keys()):
        if theirs.get(name) != mine.get(name):
            part = _HINTS.get(name.rsplit(".", 1)[-1])
            raise TokenforgeError(
                f"timm model {model_name!r}: TokenViT cannot represent {name}{f' ({part})' if part else ''}: "
                f"timm has {theirs.get(name, 'nothing')}, TokenViT {mine.get(name, 'nothing')}"
            )
    attn, my_attn = vit.blocks[0].attn, ours.blocks[0].attn
    if (attn.num_heads, attn.head_dim, attn.scale) != (my_attn.num_heads, my_attn.head_dim, my_attn.scale):
        heads = f"{attn.num_heads} x {attn.head_dim}"
        raise TokenforgeError(f"timm model {model_name!r}: attention heads {heads} differ from TokenViT's")


# --- the checkpoint ------------------------------------------------------------------------------


def _load_checkpoint(vit: nn.Module, path: Path, model_name: str) -> None:
    """Read `path` into the timm model: every key and shape must match (head keys are dropped)."""
    state = _read_state_dict(path)
    state = {k: v for k, v in state.items() if not (k == "head" or k.startswith("head."))}
    expected = vit.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [f"{what} {_few(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                          ("shape (file vs model)", shapes)) if keys]
    if problems:
        resized = any(s.startswith("pos_embed ") for s in shapes)
        hint = " (pass img_size in model_kwargs for a checkpoint at another size)" if resized else ""
        raise TokenforgeError(f"{path}: does not match timm model {model_name!r}: {'; '.join(problems)}{hint}")
    vit.load_state_dict(state, strict=True)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a weights-only torch file (bare or under "state_dict"/"model")."""
    if not path.is_file():
        raise TokenforgeError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's file to fix
        raise TokenforgeError(f"{path}: cannot read the checkpoint: {one_line(err)}") from None
    if isinstance(state, Mapping) and not _is_state_dict(state):
        state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), Mapping)), state)
    if not isinstance(state, Mapping) or not _is_state_dict(state):
        raise TokenforgeError(f"{path}: not a state dict (expected tensors, or a dict with 'state_dict' or 'model')")
    prefix = "module."  # saved from DistributedDataParallel
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _is_state_dict(state: Mapping) -> bool:
    return bool(state) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


# --- the mapping ---------------------------------------------------------------------------------


@torch.no_grad()
def _mapped_weights(model_name: str, vit: nn.Module, ours: nn.Module, grid: tuple[int, int], channels: int) -> dict:
    """TokenViT's state dict: the timm weights with the projection and positions mapped, our head."""
    weights = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    proj = vit.patch_embed.proj
    weight, bias = _fold_normalisation(model_name, vit, proj.weight, proj.bias)
    timm_channels = weight.shape[1]
    if channels != timm_channels:
        from timm.models import adapt_input_conv

        if timm_channels != 3:
            raise TokenforgeError(
                f"timm model {model_name!r} reads {timm_channels} channels; "
                f"adapting it to {channels} needs an RGB model"
            )
        try:
            weight = adapt_input_conv(channels, weight)
        except (NotImplementedError, ValueError, AssertionError) as err:
            raise TokenforgeError(
                f"timm model {model_name!r}: cannot adapt the projection to {channels} channels: {one_line(err)}"
            ) from None
    embed = weight.shape[0]
    # (E, C, p, p) -> (E, p, p, C): the unit order of `patchify` (patch row, patch column, channel)
    weights["patch_embed.proj.weight"] = weight.permute(0, 2, 3, 1).reshape(embed, -1, 1, 1).contiguous()
    weights["patch_embed.proj.bias"] = bias
    weights["pos_embed"] = _positions(vit, grid)
    for key, value in ours.state_dict().items():
        if key == "head" or key.startswith("head."):
            weights[key] = value
    mine = ours.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(mine[k].shape)}" for k, v in weights.items()
             if k in mine and v.shape != mine[k].shape]
    wrong += sorted(weights.keys() ^ mine.keys())
    if wrong:
        raise TokenforgeError(f"timm model {model_name!r}: weights do not map onto TokenViT: {_few(wrong)}")
    return weights


def _fold_normalisation(
    model_name: str, vit: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection for x/255 inputs: the model's (x/255 - mean_c)/std_c folded into weight and bias.

    Computed in float64: W' = W/std_c, b' = b - sum(W * mean_c/std_c)."""
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    w = weight.double()
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.double()
    if mean is not None and std is not None:
        c = w.shape[1]
        mean, std = tuple(mean), tuple(std)
        mean, std = (mean * c if len(mean) == 1 else mean), (std * c if len(std) == 1 else std)
        if len(mean) != c or len(std) != c:
            raise TokenforgeError(
                f"timm model {model_name!r}: pretrained_cfg mean/std have {len(mean)}/{len(std)} values for {c} input "
                "channels (set them with model_kwargs={'pretrained_cfg_overlay': {'mean': ..., 'std': ...}})"
            )
        mean_t = torch.tensor(mean, dtype=torch.float64)[None, :, None, None]
        std_t = torch.tensor(std, dtype=torch.float64)[None, :, None, None]
        b = b - (w * mean_t / std_t).sum(dim=(1, 2, 3))
        w = w / std_t
    return w.to(weight.dtype), b.to(weight.dtype)


def _positions(vit: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The positional table (1, prefix + h*w, E) on `grid`: prefix rows first (zeros for `no_embed_class`)."""
    from timm.layers import resample_abs_pos_embed

    pos = vit.pos_embed.detach()
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    old = tuple(vit.patch_embed.grid_size)
    if old != grid:  # the same grid stays bit for bit
        pos = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(old), num_prefix_tokens=prefix)
    if vit.no_embed_class and vit.num_prefix_tokens:  # timm adds positions to patches only: zeros for the prefix
        pos = torch.cat([pos.new_zeros(1, vit.num_prefix_tokens, pos.shape[-1]), pos], dim=1)
    return pos.clone()


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
