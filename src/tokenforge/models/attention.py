"""The transformer block and attention of TokenViT: timm's, plus token positions, output rows and a probe.

`TokenBlock` is timm's `Block`, built by timm's `VisionTransformer` (`block_fn=TokenBlock`), so its parameters,
their names, initialisation and state-dict order are timm's. Its attention is a `TokenAttention`, which takes
over the submodules of the timm `Attention` the block was built with (qkv, q_norm, k_norm, attn_drop, norm,
gate, proj, proj_drop: the same objects, in the same order) and computes what timm's `Attention.forward`
computes, op for op, so outputs are bitwise timm's: fused `scaled_dot_product_attention` by default, the
unfused softmax(q k^T * scale) -> attn_drop -> @ v when `fused_attn` is off.

What timm's block does not take:
- `positions` (B, k): the grid positions of the block input's non-prefix tokens (prefix tokens come first).
  The standard attention ignores them; they are there for blocks that depend on where tokens are (routed
  attention, token expansion). `TokenViT` passes them to every block whose forward has a `positions` argument;
- `rows=r`: compute only the first r tokens' outputs, (B, r, E): their queries, attention rows, projection and
  MLP; keys and values still come from every token. Exact for whatever reads only those tokens (the logits
  read only the class token), and cheaper; always the fused kernel unless the probe records;
- `attn.probe`, an `AttentionProbe` or None, set and cleared by `TokenViT.probe` (never by hand):
  `record` computes the attention unfused, exactly as timm's unfused path, and keeps the probabilities
  (B, heads, rows, N), the output of `attn_drop`, in `probe.map`, in the autograd graph; `key_scale` (B, N)
  multiplies every token's key (after k_norm) by its factor, which multiplies the pre-softmax logits of
  column j by factor j for every query (AtMan's suppression), on the fused and the unfused path alike.

Routed attention spans (TRAR, `ModelConfig.attention = "routed"`; METHODS.md §5, ported from TRAR-VQA's
`openvqa/models/TRAR/trar.py`), set up by `TokenViT` through `TokenAttention.route`:
- span masks (`span_masks`): per order o of `orders`, a token may attend only to the tokens within its
  (2o+1)x(2o+1) Chebyshev window on the grid, from each token's real grid coordinates (so subsets and thinned
  sequences work); order 0 is global; prefix tokens see and are seen by all. Boolean, True = attend (SDPA's and
  timm's convention; TRAR's masks are the opposite, True = blocked). `TokenViT` computes them once per forward
  and passes them to the blocks as `spans` (B or 1, L, N, N); a block given none computes them from `positions`;
- a `Router` per block on the attention's input x: mean over the tokens -> Linear(D, D/2, no bias) -> ReLU ->
  Linear(D/2, L) -> softmax (soft), or gumbel-softmax with hard=True (straight-through) at the temperature the
  training loop sets (hard; at evaluation the argmax, one-hot: TRAR's BINARIZE);
- the output: sum_l alpha_l * SDPA(q, k, v, mask_l), one fused call per order (order 0 unmasked): TRAR mixes the
  maps and multiplies V once, which is the same since the mix is linear. The unfused path, and the probe, mix the
  maps: sum_l alpha_l * attn_drop(softmax_l), so `probe.map` is the routed attention attribution reads.
The router's parameters are `attn.router.fc1.weight`, `attn.router.fc2.{weight,bias}`: next to timm's, so a
timm (or global) state dict loads into every other parameter with strict=False, missing only those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block
from torch import nn

from tokenforge.errors import TokenforgeError

# timm's Attention submodules that TokenAttention knows how to run; any other one (a newer timm) is an error
_KNOWN = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "gate", "proj", "proj_drop")


@dataclass
class AttentionProbe:
    """One block's part of a `TokenViT.probe`: what its attention records and changes."""

    record: bool = False  # keep the attention probabilities in `map` (computed unfused)
    key_scale: torch.Tensor | None = None  # (B, N) per-token key factors
    map: torch.Tensor | None = None  # (B, heads, rows, N) after a forward with `record`


def span_masks(positions: torch.Tensor, width: int, orders: tuple[int, ...], prefix: int) -> torch.Tensor:
    """Boolean span masks (B, L, prefix + k, prefix + k), True = attend, for tokens at grid `positions` (B, k).

    Mask l lets grid token i attend to grid token j when max(|row_i - row_j|, |col_i - col_j|) <= orders[l] (rows and
    columns of a grid `width` wide); order 0 lets every token attend everywhere; the prefix rows and columns are True."""
    rows, cols = torch.div(positions, width, rounding_mode="floor"), positions % width
    dist = torch.maximum((rows[:, :, None] - rows[:, None, :]).abs(), (cols[:, :, None] - cols[:, None, :]).abs())
    order = torch.tensor(orders, device=positions.device)[None, :, None, None]
    grid = (dist[:, None] <= order) | (order == 0)  # (B, L, k, k)
    b, k = positions.shape
    masks = torch.ones(b, len(orders), prefix + k, prefix + k, dtype=torch.bool, device=positions.device)
    masks[:, :, prefix:, prefix:] = grid
    return masks


def routing_temperature(progress: float, start: float = 10.0, end: float = 0.1) -> float:
    """Hard routing's gumbel-softmax temperature at `progress` in [0, 1] of a task's training: linear from `start`
    to `end` (TRAR's TAU_MAX 10, TAU_MIN 0.1, TAU_POLICY 0, there per epoch, here per step)."""
    progress = min(max(float(progress), 0.0), 1.0)
    return start + (end - start) * progress


class Router(nn.Module):
    """TRAR's routing block with average pooling: per sample, weights (B, L) over the span orders."""

    def __init__(self, dim: int, orders: int, hard: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 2, bias=False)
        self.fc2 = nn.Linear(dim // 2, orders)
        self.hard = hard
        self.temperature = routing_temperature(0.0)  # hard routing while training; the loop lowers it (TokenViT.set_progress)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) -> alpha (B, L): softmax weights (soft); one-hot, straight-through in training (hard)."""
        logits = self.fc2(F.relu(self.fc1(x.mean(dim=1))))
        if not self.hard:
            return logits.softmax(dim=-1)
        if self.training:  # the noise comes from torch's global generator, which the training checkpoints keep
            return F.gumbel_softmax(logits, tau=self.temperature, hard=True)
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)


class TokenAttention(nn.Module):
    """timm's multi-head self attention, run by our forward (positions, rows, a probe and, once `route`d, routed
    attention spans; see the module doc)."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        if type(attn) is not Attention:
            raise TokenforgeError(f"TokenAttention wraps timm's Attention, not {type(attn).__name__}")
        unknown = set(attn._modules) - set(_KNOWN)
        if unknown:
            raise TokenforgeError(f"timm's Attention has submodules TokenAttention does not run: {sorted(unknown)}")
        for name, module in attn._modules.items():  # the same modules in the same order: the same state dict
            self.add_module(name, module)
        if "gate" not in self._modules:  # timm before gated attention
            self.gate = None
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.fused_attn = attn.fused_attn
        self.probe: AttentionProbe | None = None
        self.router: Router | None = None  # routed attention spans (route); None: global attention, timm's
        self.orders: tuple[int, ...] = ()
        self.width = 0  # the grid's width, for span masks from positions

    def route(self, orders: tuple[int, ...], hard: bool, width: int) -> None:
        """Routed attention spans over `orders` on a grid `width` wide (module doc), with a new router."""
        self.router = Router(self.num_heads * self.head_dim, len(orders), hard)
        self.orders, self.width = tuple(orders), width

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        *,
        positions: torch.Tensor | None = None,
        rows: int | None = None,
        spans: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """timm's `Attention.forward` for x (B, N, C) -> (B, N or rows, C).

        Global attention ignores `positions` and `spans`; routed attention reads `spans` (B or 1, L, N, N), or
        makes them from `positions` (B, N - prefix) when none are given."""
        b, n, _ = x.shape
        m = n if rows is None else rows
        q, k, v = self._qkv(x, rows)
        q, k = self.q_norm(q), self.k_norm(k)
        probe = self.probe
        if probe is not None and probe.key_scale is not None:
            k = k * probe.key_scale[:, None, :, None].to(k.dtype)  # k: (B, heads, N, head_dim)
        # the rows path is a speed path: fused even when `fused_attn` is off (as the scorers' trick it replaces was)
        fused = (self.fused_attn or rows is not None) and (probe is None or not probe.record)
        if self.router is not None:
            if attn_mask is not None or is_causal:
                raise TokenforgeError("routed attention makes its own masks: no attn_mask or is_causal")
            out = self._routed(x, q, k, v, self._spans(spans, positions, n)[:, :, :m], fused, probe)
        elif fused:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0, is_causal=is_causal
            )
        else:
            if attn_mask is not None or is_causal:
                raise TokenforgeError("attention masks need the fused attention path (no attention probe)")
            out = self._unfused(q, k, v, probe)
        out = self.norm(out.transpose(1, 2).reshape(b, m, self.num_heads * self.head_dim))
        if self.gate is not None:
            out = out * self.gate(x if rows is None else x[:, :rows]).sigmoid()
        return self.proj_drop(self.proj(out))

    def _qkv(self, x: torch.Tensor, rows: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, heads, rows, head_dim), keys and values (B, heads, N, head_dim); rows=None: every token."""
        b, n, _ = x.shape
        if rows is None:
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return qkv.unbind(0)
        width = self.num_heads * self.head_dim
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :rows], weight[:width], None if bias is None else bias[:width])
        kv = F.linear(x, weight[width:], None if bias is None else bias[width:])
        k, v = kv.reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q.reshape(b, rows, self.num_heads, self.head_dim).transpose(1, 2), k, v

    def _unfused(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        probe: AttentionProbe | None,
        spans: torch.Tensor | None = None,
        alpha: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """timm's unfused path, keeping the probabilities when the probe records; routed (spans (B', L, rows, N)
        and alpha (B, L) given): the maps of every order mixed, sum_l alpha_l * attn_drop(softmax_l)."""
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if alpha is None:
            attn = self.attn_drop(attn.softmax(dim=-1))
        else:
            mixed = None
            for i, order in enumerate(self.orders):
                logits = attn if order == 0 else attn.masked_fill(~spans[:, i, None], float("-inf"))
                part = self.attn_drop(logits.softmax(dim=-1)) * alpha[:, i, None, None, None]
                mixed = part if mixed is None else mixed + part
            attn = mixed
        if probe is not None and probe.record:
            probe.map = attn
        return attn @ v

    def _routed(self, x, q, k, v, spans: torch.Tensor, fused: bool, probe: AttentionProbe | None) -> torch.Tensor:
        """Routed attention (module doc): sum_l alpha_l * SDPA(q, k, v, mask_l) fused, the mixed maps unfused."""
        alpha = self.router(x).to(q.dtype)  # (B, L), from every token's input, also under rows
        if not fused:
            return self._unfused(q, k, v, probe, spans, alpha)
        dropout = self.attn_drop.p if self.training else 0.0
        out = None
        for i, order in enumerate(self.orders):  # order 0 unmasked: no mask to read, the fastest kernels
            mask = None if order == 0 else spans[:, i, None]  # (B', 1, rows, N): broadcast over the heads
            part = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout) * alpha[:, i, None, None, None]
            out = part if out is None else out + part
        return out

    def _spans(self, spans: torch.Tensor | None, positions: torch.Tensor | None, n: int) -> torch.Tensor:
        """The span masks (B', L, N, N) given, or made from the grid positions of the non-prefix tokens."""
        if spans is not None:
            return spans
        if positions is None:
            raise TokenforgeError("routed attention needs the tokens' grid positions (or their span masks)")
        if positions.stride(0) == 0:  # one set of positions for the whole batch (a full grid): one mask
            positions = positions[:1]
        return span_masks(positions, self.width, self.orders, n - positions.shape[1])


class TokenBlock(Block):
    """timm's pre-norm transformer `Block` with a `TokenAttention`; its forward also takes positions and rows."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attn = TokenAttention(self.attn)  # replaces the entry in place: names and order unchanged

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        *,
        positions: torch.Tensor | None = None,
        rows: int | None = None,
        spans: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """timm's `Block.forward` (x: (B, N, C)); `positions` and `spans` go to the attention, `rows` keeps the
        first rows tokens."""
        y = x if rows is None else x[:, :rows]
        h = self.attn(self.norm1(x), attn_mask, is_causal, positions=positions, rows=rows, spans=spans)
        y = y + self.drop_path1(self.ls1(h))
        return y + self.drop_path2(self.ls2(self.mlp(self.norm2(y))))
