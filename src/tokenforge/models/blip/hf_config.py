"""The HF side of the model's construction: a from-scratch `BlipConfig` from the settings, the settings' ids written
everywhere BLIP and `generate` read them, and seeded construction that leaves the caller's RNG alone.

Deviations from HF BLIP's defaults in a scratch config: the vision config's `image_size` / `patch_size` are
placeholders (the stem owns the grid); all `initializer_range`s are 0.02 (the vision default, 1e-10, does not train
from scratch); no dropout (BLIP's defaults).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tokenforge.models.blip.settings import BlipSettings


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's CPU RNG seeded inside, the caller's global RNG state untouched outside."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def blip_config(settings: BlipSettings) -> Any:
    """A transformers `BlipConfig` for a model from scratch (module doc: deviations)."""
    from transformers import BlipConfig

    width, inner = settings.width, round(settings.width * settings.mlp_ratio)
    side = max(settings.grid)  # placeholder: the stem owns the grid
    return BlipConfig(
        vision_config={"hidden_size": width, "intermediate_size": inner, "num_hidden_layers": settings.vision_layers,
                       "num_attention_heads": settings.heads, "image_size": side, "patch_size": 1,
                       "initializer_range": 0.02},
        text_config={"vocab_size": settings.vocab_size, "hidden_size": width, "encoder_hidden_size": width,
                     "intermediate_size": inner, "num_hidden_layers": settings.text_layers,
                     "num_attention_heads": settings.heads, "max_position_embeddings": settings.max_text_len,
                     "initializer_range": 0.02, "pad_token_id": settings.pad_id, "bos_token_id": settings.bos_id,
                     "eos_token_id": settings.eos_id, "sep_token_id": settings.sep_id},
        initializer_range=0.02,
    )


def set_ids(hf: nn.Module, settings: BlipSettings) -> None:
    """The settings' ids everywhere BLIP and `generate` read them: the text config (bos, eos, pad, sep), the wrappers'
    cached copies (`decoder_start_token_id`, `decoder_input_ids`, `decoder_pad_token_id`) and the generation configs
    (eos = sep: BLIP generates until [SEP])."""
    text = hf.config.text_config
    text.bos_token_id, text.eos_token_id = settings.bos_id, settings.eos_id
    text.pad_token_id, text.sep_token_id = settings.pad_id, settings.sep_id
    if hasattr(hf, "decoder_start_token_id"):
        hf.decoder_start_token_id = settings.bos_id
    if hasattr(hf, "decoder_input_ids"):
        hf.decoder_input_ids = settings.bos_id
    hf.decoder_pad_token_id = settings.pad_id
    for module in (hf, hf.text_decoder):
        gen = getattr(module, "generation_config", None)
        if gen is not None:
            gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = settings.bos_id, settings.sep_id, settings.pad_id
            gen.decoder_start_token_id = settings.bos_id
