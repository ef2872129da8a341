"""A workaround for transformers 5.x's BLIP text cross-attention, which loses the encoder's attention mask.

`BlipTextAttention` passes the (prepared) encoder mask as `attention_mask`, and `BlipTextSelfAttention` then reads
`encoder_attention_mask` instead, never passed (None), so padded encoder tokens (the VQA question's padding) were
attended to by the answer decoder. A forward pre-hook on each text cross-attention (`cross_mask`) hands the mask
over; a no-op where the mask already arrives.
"""

from __future__ import annotations

from torch import nn


def cross_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of a BLIP text cross-attention (`crossattention.self`): its key mask, as HF meant it, handed
    over under the name that is read (module doc). A no-op where the mask already arrives as `encoder_attention_mask`
    or positionally (other transformers versions)."""
    if kwargs.get("encoder_hidden_states") is None or kwargs.get("encoder_attention_mask") is not None:
        return None
    if kwargs.get("attention_mask") is None:
        return None
    return args, {**kwargs, "encoder_attention_mask": kwargs["attention_mask"]}


def mask_cross_attention(hf: nn.Module) -> None:
    """`cross_mask` on every text cross-attention (the VQA question encoder's and the decoder's)."""
    for name, module in hf.named_modules():
        if name.endswith("crossattention.self"):
            module.register_forward_pre_hook(cross_mask, with_kwargs=True)
