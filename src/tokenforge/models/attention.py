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


class TokenAttention(nn.Module):
    """timm's multi-head self attention, run by our forward (positions, rows and a probe; see the module doc)."""

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

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        *,
        positions: torch.Tensor | None = None,
        rows: int | None = None,
    ) -> torch.Tensor:
        """timm's `Attention.forward` for x (B, N, C) -> (B, N or rows, C); `positions` are accepted and unused."""
        b, n, _ = x.shape
        m = n if rows is None else rows
        q, k, v = self._qkv(x, rows)
        q, k = self.q_norm(q), self.k_norm(k)
        probe = self.probe
        if probe is not None and probe.key_scale is not None:
            k = k * probe.key_scale[:, None, :, None].to(k.dtype)  # k: (B, heads, N, head_dim)
        # the rows path is a speed path: fused even when `fused_attn` is off (as the scorers' trick it replaces was)
        if (self.fused_attn or rows is not None) and (probe is None or not probe.record):
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

    def _unfused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probe: AttentionProbe | None) -> torch.Tensor:
        """timm's unfused path, keeping the probabilities when the probe records."""
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        if probe is not None and probe.record:
            probe.map = attn
        return attn @ v


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
    ) -> torch.Tensor:
        """timm's `Block.forward` (x: (B, N, C)); `positions` go to the attention, `rows` keeps the first rows tokens."""
        y = x if rows is None else x[:, :rows]
        h = self.attn(self.norm1(x), attn_mask, is_causal, positions=positions, rows=rows)
        y = y + self.drop_path1(self.ls1(h))
        return y + self.drop_path2(self.ls2(self.mlp(self.norm2(y))))
