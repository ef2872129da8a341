"""TokenViT: a timm VisionTransformer that reads VQ token grids (or, as a baseline, pixel patches).

Every input is a grid of h x w *units*, one per ViT token:
- `input="tokens"`: a unit is a code id; it is looked up in the frozen tokenizer codebook (SeiT's
  input), giving a (D, h, w) embedding map;
- `input="pixels"`: a unit is one uint8 patch of `patch` x `patch` x C pixels (the same grid as the
  tokenizer's, so both models have the same size and sequence length).
The parameters are timm's VisionTransformer's (patch size 1: a linear projection per unit), built by timm,
with our block (`models.attention.TokenBlock`: timm's Block with our attention). Its settings are a `ModelConfig`
(models.config); saving and loading it is models.store; code imports all of these from models.vit.

One forward, `forward(units, positions)` / `features(...)` / `forward_tokens(...)`, for full grids and for
*subsets* of units with their grid positions (B, k): a replayed memory sample is a short sequence of only its
kept units, with their own positional embeddings, so replay costs less compute than a full image. The path:
embed -> patch projection -> positional embeddings at the positions (all of them for a full grid) -> prefix
tokens (the class token, then `config.prompts` timm register tokens, each with its positional embedding, then
`config.prompt_tokens` VPT prompt tokens, without one: they are in every sequence, subsets included, and
`vit.num_prefix_tokens` counts them all) -> blocks, each given the positions when its forward takes a `positions`
argument (deep prompts replaced before each block) -> final norm -> head on the class token. A float `units` tensor is
taken as an already embedded map (B, D, h, w) or sequence (B, k, D): token augmentations work on embeddings.
Full grids are projected by timm's patch embedding (a 1x1 Conv2d) and subsets by the same weights as a linear
map: the two differ in the last bits (measured), and full grids keep timm's bits.

The probe, for attribution (`continual.scorers`), undone when the context exits:

    with model.probe(attention=True) as probe:    # or a list of block indices
        logits = model(units)
    maps = probe.maps                              # per block: (B, heads, N, N), in the autograd graph

    with model.probe(key_scale=factors, prefix_only=True):
        logits = model(units)                      # keys of token j scaled by factors[:, j] in every block

`attention` records the probabilities of those blocks, computed unfused exactly as timm's unfused attention
(softmax(q k^T * scale), attention dropout, @ v); gradients w.r.t. `probe.maps` are the attention gradients. With
routed attention the maps are the routed ones, sum_l alpha_l * attn_drop(softmax_l): what the block attends with.
`key_scale` (B, N: prefix tokens first) multiplies each token's keys in every block (AtMan). `prefix_only`
makes the last block compute only the prefix tokens' outputs (exact for logits and features, which read the
class token; cheaper: AtMan runs h*w forwards per sample). Other blocks keep the fused attention.

Training-time schedules, set on the model and never saved with it (a new or loaded model has them off):
`set_expansion(config)` turns on token expansion (`models.expansion`) and `set_epoch(epoch)` says where in the
task's epochs training is. Expansion thins only forwards that train with gradients and no probe.
`set_progress(fraction)` (the training loop, every step) sets hard routing's temperature (below).

Routed attention spans (TRAR, `config.attention = "routed"`, `orders`, `routing`; `models.attention` has the
method): every block's attention gets a router (parameters `vit.blocks.<i>.attn.router.*`, the only difference
from a global model's state dict). The span masks of a full grid are computed once, at construction, into the
non-persistent buffer `grid_spans` (1, L, N, N): rebuilt from the config, never saved, so a routed model's state
dict holds only parameters (and the codebook). Subsets, and sequences thinned by token expansion, get masks made
from their tokens' positions, once per forward. `set_routing_temperature(t)` sets hard routing's gumbel
temperature directly. A global model has no router and no buffer and runs exactly as before.

Visual prompt tuning (VPT, `config.prompt_tokens` > 0; METHODS.md §4, KMnP/vpt): n learned prompt tokens follow
the class (and register) tokens, [CLS, (REG), P x n, units], with no positional embedding, spliced in after
timm's `norm_pre` (where deep prompts enter too). Shallow: one set, `prompt_embeddings` (1, n, E), at the input.
Deep (`prompt_deep`): VPT's layout, the input set plus `deep_prompt_embeddings` (depth - 1, n, E): before block
i >= 1 the n prompt outputs of block i - 1 are replaced by set i - 1 (depth sets in all), outside the
checkpointed call, so activation checkpointing recomputes each block with its own prompts. Both are initialised
uniform(-v, v), v = sqrt(6 / (fan_in + E)) (VPT's xavier-uniform bound, sqrt(6 / (3 p^2 + E)), with our stem's
fan-in: a 1x1 patch over code_dim channels, fan_in = code_dim). `prompt_dropout` drops prompt entries (each
sample its own mask) in training forwards. A prompted model trains only the tensors `config.is_tuned` names (the
prompts, every name with "prompt" in it, and the head `vit.head.*`): the others have requires_grad False from
construction, and `train()` keeps the backbone (`vit`) in eval mode, so dropout, drop path and hard routing's
noise stay off while the prompts train. `vit.num_prefix_tokens` counts the prompts (timm's own count, which
`pos_embed` covers, is `embedded_prefix`), so attribution, token expansion, span masks and the probe skip them
like the class token. `save_model` records the frozen part's digest (`backbone_sha256`) and `load_model` checks it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokenforge.errors import TokenforgeError
from tokenforge.models import INPUTS
from tokenforge.models.config import ModelConfig, check_attention, check_prompts, is_tuned
from tokenforge.models.expansion import ExpansionConfig, expand

if TYPE_CHECKING:
    from tokenforge.models.attention import AttentionProbe


class Probe:
    """One `TokenViT.probe` context: its settings and, after a forward, the attention maps it recorded."""

    def __init__(self, blocks: tuple[int, ...], taps: list[AttentionProbe], prefix_only: bool):
        self.blocks = blocks  # the blocks whose attention is recorded, in the order of `maps`
        self.prefix_only = prefix_only
        self._taps = taps

    @property
    def maps(self) -> list[torch.Tensor]:
        """Attention probabilities (B, heads, N, N) of `blocks` from the last forward in the context."""
        maps = [self._taps[i].map for i in self.blocks]
        if any(m is None for m in maps):
            raise TokenforgeError("probe: no attention recorded (run the model inside the probe context)")
        return maps


@functools.cache
def _takes(forward, name: str) -> bool:
    """Whether a forward function has an argument `name` (blocks get positions only where they accept them)."""
    return name in inspect.signature(forward).parameters


class TokenViT(nn.Module):
    """timm's VisionTransformer (`self.vit`) on unit grids, with our one forward and the probe (module doc)."""

    def __init__(self, config: ModelConfig, codebook: torch.Tensor | None = None):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        from tokenforge.models.attention import TokenBlock

        if config.input not in INPUTS:
            raise TokenforgeError(f"input: unknown input {config.input!r}; expected one of {', '.join(INPUTS)}")
        check_attention(config)
        check_prompts(config)
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
            self.register_buffer("codebook", standardised(codebook))
            if config.mask_token:  # in the standardised code space: zeros is the mean code to start from
                self.mask_embed = nn.Parameter(torch.zeros(config.code_dim))
        elif config.mask_token:
            raise TokenforgeError("mask_token: a learned mask embedding needs input tokens (pixels fill with the mean patch)")
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
            reg_tokens=config.prompts,
            global_pool="token",
            block_fn=TokenBlock,
        )
        self.embedded_prefix = self.vit.num_prefix_tokens  # class and register tokens: those with a positional embedding
        self.vit.num_prefix_tokens += config.prompt_tokens  # VPT's prompts are prefix tokens too (no positional embedding)
        if config.attention == "routed":  # after timm's initialisation: its weights are a global model's, same seed
            self._route()
        if config.prompt_tokens:  # after everything else: the backbone's initialisation is an unprompted model's
            self._prompt()
        self._probe: Probe | None = None
        self.expansion: ExpansionConfig | None = None  # token expansion in training forwards (set_expansion)
        self.epoch = 0  # the epoch within the task being trained (set_epoch): the expansion stage follows it
        if config.extra_options:  # model options of one's own, last (models/options/extra.py)
            from tokenforge.models import MODEL_OPTIONS

            for name, settings in config.extra_options.items():
                MODEL_OPTIONS.load(name, "train.model_options").build(self, settings)

    def _route(self) -> None:
        """Routed attention spans: a router per block, the full grid's span masks as a non-persistent buffer."""
        from tokenforge.models.attention import span_masks

        config, vit = self.config, self.vit
        width = config.grid[1]
        for block in vit.blocks:
            block.attn.route(config.orders, config.routing == "hard", width)
        grid = torch.arange(self.num_tokens)[None]
        self.register_buffer("grid_spans", span_masks(grid, width, config.orders, vit.num_prefix_tokens), persistent=False)

    def _prompt(self) -> None:
        """VPT's prompt parameters (uniform in +-sqrt(6 / (code_dim + E))), its dropout, and the backbone frozen."""
        config = self.config
        n, width, depth = config.prompt_tokens, config.embed_dim, len(self.vit.blocks)
        bound = math.sqrt(6.0 / (config.code_dim + width))  # VPT's sqrt(6 / (3 p^2 + E)) with our stem's fan-in
        self.prompt_embeddings = nn.Parameter(torch.empty(1, n, width).uniform_(-bound, bound))
        if config.prompt_deep and depth > 1:
            self.deep_prompt_embeddings = nn.Parameter(torch.empty(depth - 1, n, width).uniform_(-bound, bound))
        self.prompt_dropout = nn.Dropout(config.prompt_dropout)
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(is_tuned(name))

    def train(self, mode: bool = True) -> "TokenViT":
        """nn.Module.train; a prompted model's backbone stays in eval mode (VPT: only the prompts train)."""
        super().train(mode)
        if self.config.prompt_tokens:
            self.vit.eval()
        return self

    def set_fused_attention(self, fused: bool) -> None:
        """Every block's attention fused (`F.scaled_dot_product_attention`, timm's default) or unfused (softmax(q k^T)
        @ v). A training setting, never saved; the probe records unfused maps either way."""
        for block in self.vit.blocks:
            block.attn.fused_attn = bool(fused)

    def set_routing_temperature(self, temperature: float) -> None:
        """Hard routing's gumbel-softmax temperature in training forwards (no effect on soft or global attention)."""
        for block in self.vit.blocks:
            router = getattr(getattr(block, "attn", None), "router", None)
            if router is not None:
                router.temperature = float(temperature)

    def set_progress(self, fraction: float) -> None:
        """How far the task's training is, in [0, 1], set by the training loop before every step: hard routing's
        temperature follows it (`models.attention.routing_temperature`, 10 -> 0.1)."""
        if self.config.attention == "routed" and self.config.routing == "hard":
            from tokenforge.models.attention import routing_temperature

            self.set_routing_temperature(routing_temperature(fraction))

    def set_expansion(self, config: ExpansionConfig | None) -> None:
        """Token expansion (`models.expansion`) in training forwards from now on; None: off (the default)."""
        if config is not None:
            config.check_depth(len(self.vit.blocks))
        self.expansion = config

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the task now training (0-based), set by the training loop when an epoch starts."""
        self.epoch = epoch

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
            table = torch.cat([self.codebook, self.mask_embed[None]]) if self.config.mask_token else self.codebook
            return table[units].to(dtype)
        return (units.float() / 255.0).to(dtype)

    def project(self, emb: torch.Tensor) -> torch.Tensor:
        """Embedded units (..., D) -> patch tokens (..., E): the patch embedding as a linear map, no positions."""
        patch_embed = self.vit.patch_embed
        proj = patch_embed.proj  # Conv2d with kernel 1 == a linear map per unit
        return patch_embed.norm(F.linear(emb, proj.weight.flatten(1), proj.bias))

    def forward(self, units: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for full grids, or for unit subsets at `positions` (B, k).

        Full grids: ids (B, h, w), pixel patches (B, h, w, F) or an embedded map (B, D, h, w).
        Subsets: ids (B, k), patches (B, k, F) or embeddings (B, k, D).
        """
        return self.vit.forward_head(self.forward_tokens(units, positions))

    def features(self, units: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-logit features (B, embed_dim): the class token after the final norm, for full grids or subsets."""
        return self.vit.forward_head(self.forward_tokens(units, positions), pre_logits=True)

    def forward_tokens(self, units: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Every token after the final norm (B, prefix + k, E): prefix tokens first, then the units in order.

        Under `probe(prefix_only=True)` only the prefix tokens (B, prefix, E)."""
        x = self._patch_tokens(units, positions)
        full = positions is None
        if full:  # every position, in order
            positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        x = self._with_prefix(x, positions, full)
        return self.vit.norm(self._blocks(x, positions, full))

    def _patch_tokens(self, units: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """Projected units (B, k, E); for a full grid (no positions) by timm's 1x1 convolution, timm's bits."""
        emb = self.embed(units)
        if positions is not None:
            return self.project(emb)
        if not units.is_floating_point():
            emb = emb.permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.vit.patch_embed(emb)

    def _with_prefix(self, x: torch.Tensor, positions: torch.Tensor, full: bool) -> torch.Tensor:
        """The prefix tokens, then the grid tokens, each plus its positional embedding.

        A full grid in timm's order (concatenate, then add every embedding by broadcasting): the same values as
        adding the embeddings indexed by position, and also timm's gradient bits (indexing scatters instead)."""
        vit = self.vit
        prefix = self.embedded_prefix  # the prompts (inserted after) have no positional embedding
        tokens = vit.cls_token if vit.reg_token is None else torch.cat([vit.cls_token, vit.reg_token], dim=1)
        tokens = tokens.expand(x.shape[0], -1, -1)
        if full:
            x = torch.cat([tokens, x], dim=1) + vit.pos_embed
        else:
            pos = vit.pos_embed[0]  # (prefix + h*w, E): prefix tokens first
            x = torch.cat([tokens + pos[:prefix], x + pos[prefix + positions]], dim=1)
        x = vit.norm_pre(vit.pos_drop(x))
        return self._prompted(x, 0) if self.config.prompt_tokens else x

    def _prompted(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """The sequence block `block` reads: the input prompts inserted after the class/register tokens (block 0), or
        deep prompts replacing the n tokens there (block >= 1); after dropout in training forwards."""
        start, n = self.embedded_prefix, self.config.prompt_tokens
        prompts = self.prompt_embeddings if block == 0 else self.deep_prompt_embeddings[block - 1 : block]
        prompts = prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        if self.training and self.prompt_dropout.p > 0:
            prompts = self.prompt_dropout(prompts)
        return torch.cat([x[:, :start], prompts, x[:, start + (n if block else 0) :]], dim=1)

    def _blocks(self, x: torch.Tensor, positions: torch.Tensor, full: bool = False) -> torch.Tensor:
        """The blocks in order, each given the positions (and, routed, the span masks) if its forward takes them;
        checkpointed when enabled; deep prompts replaced before every block but the first.

        Token expansion thins the sequence after its block, outside the checkpointed calls, positions following."""
        vit = self.vit
        checkpointing = vit.grad_checkpointing and torch.is_grad_enabled()  # activation checkpointing, as timm's
        last = len(vit.blocks) - 1
        expansion = self.expansion if self._expanding() else None
        spans = self._spans(positions, full)
        deep = self.config.prompt_tokens and self.config.prompt_deep
        for i, block in enumerate(vit.blocks):
            if deep and i > 0:  # outside the checkpointed call: recomputation runs the block on these very prompts
                x = self._prompted(x, i)
            kwargs = {"positions": positions} if _takes(type(block).forward, "positions") else {}
            if spans is not None and _takes(type(block).forward, "spans"):
                kwargs["spans"] = spans
            if i == last and self._probe is not None and self._probe.prefix_only:
                if not _takes(type(block).forward, "rows"):
                    raise TokenforgeError(f"probe: prefix_only needs a last block that takes rows, not {type(block).__name__}")
                kwargs["rows"] = vit.num_prefix_tokens
            if checkpointing:
                x = checkpoint(block, x, use_reentrant=False, **kwargs)
            else:
                x = block(x, **kwargs)
            if expansion is not None and i == expansion.after:
                x, positions = expand(x, positions, expansion, expansion.stage(self.epoch), vit.num_prefix_tokens)
                spans = self._spans(positions, False)
        return x

    def _spans(self, positions: torch.Tensor, full: bool) -> torch.Tensor | None:
        """Routed attention's span masks (B or 1, L, N, N) for tokens at `positions`; None for global attention."""
        if self.config.attention != "routed":
            return None
        if full:
            return self.grid_spans
        from tokenforge.models.attention import span_masks

        if positions.stride(0) == 0:  # the same positions for every sample: one mask for the batch
            positions = positions[:1]
        return span_masks(positions, self.config.grid[1], self.config.orders, self.vit.num_prefix_tokens)

    def _expanding(self) -> bool:
        """Whether token expansion thins this forward: on, training with gradients, no probe, a stage that thins."""
        if self.expansion is None or not (self.training and torch.is_grad_enabled()) or self._probe is not None:
            return False
        return self.expansion.thins(self.epoch)

    @contextmanager
    def probe(
        self, attention: bool | Sequence[int] = False, key_scale: torch.Tensor | None = None, prefix_only: bool = False
    ) -> Iterator[Probe]:
        """Record attention maps, scale keys and/or compute only the prefix outputs of the last block (module doc).

        `attention`: True for every block, or block indices; `key_scale`: (B, N) per-token key factors, N
        counting the prefix tokens first. One probe at a time; everything is undone on exit."""
        from tokenforge.models.attention import AttentionProbe, TokenAttention

        if self._probe is not None:
            raise TokenforgeError("probe: a probe is already active on this model")
        attns = [getattr(block, "attn", None) for block in self.vit.blocks]
        if any(not isinstance(attn, TokenAttention) for attn in attns):
            raise TokenforgeError("probe: every block's attention must be a TokenAttention")
        depth = len(attns)
        blocks = tuple(range(depth)) if attention is True else tuple(attention or ())
        if any(not 0 <= i < depth for i in blocks):
            raise TokenforgeError(f"probe: block indices {blocks} out of range for depth {depth}")
        taps = [AttentionProbe(record=i in blocks, key_scale=key_scale) for i in range(depth)]
        probe = Probe(blocks, taps, prefix_only)
        try:
            self._probe = probe
            for attn, tap in zip(attns, taps):
                attn.probe = tap
            yield probe
        finally:
            for attn in attns:
                attn.probe = None
            self._probe = None


def standardised(codebook: torch.Tensor) -> torch.Tensor:
    """The codebook as a TokenViT holds it: fp32, standardised per channel (idempotent)."""
    codebook = codebook.detach().clone().float()
    mean, std = codebook.mean(0), codebook.std(0, unbiased=False).clamp_min(1e-6)
    return (codebook - mean) / std


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
