"""The training and test units of a split as the models take them: code ids (N, h, w) from a token file, or
uint8 pixel patches (N, h, w, F) of the tokenizer's grid from the shards (the pixel baseline)."""

from __future__ import annotations

from pathlib import Path

from tokenforge.errors import TokenforgeError


def load_units(kind: str, tokens: Path | None, shards: Path | None, split: str, patch: int):
    """(keys, labels, units) of a split: code ids (N, h, w), or uint8 pixel patches (N, h, w, F)."""
    if kind == "tokens":
        from tokenforge.data.tokens import load_tokens

        if tokens is None:
            raise TokenforgeError("--tokens: required with --input tokens")
        data = load_tokens(tokens)
        return data.keys, data.labels, data.ids
    import torch

    from tokenforge.data.shards import load_split
    from tokenforge.models.vit import patchify

    if shards is None:
        raise TokenforgeError("--shards: required with --input pixels")
    images = load_split(shards, split)
    return images.keys, images.labels, patchify(torch.from_numpy(images.images), patch).numpy()
