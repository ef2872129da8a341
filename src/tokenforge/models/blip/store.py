"""Saving, loading and pretrained BLIP models: the files of a saved model, and the parts (settings, HF model, stem)
that `BlipModel.load` / `BlipModel.from_pretrained` assemble.

Storage (`write_model` / `read_parts` + `load_weights`): `model.safetensors` (the whole state dict, codebook and
pixel statistics included; tied weights stored once, as `safetensors.torch.save_model` does), `blip_settings.json`
(BlipSettings) and `blip_config.json` (the HF BlipConfig, so a model from a checkpoint reloads without it). Round
trips exactly, and equal models give equal bytes.

Pretrained (`pretrained_parts(local_dir, settings)`): `BlipFor...from_pretrained(local_dir, local_files_only=True)`,
then a new stem (`models.blip.stem.init_stem_from`): the class embedding is the checkpoint's, the unit position
embeddings are the checkpoint's patch position embeddings resized to the unit grid; tokens: a fresh
Linear(code_dim, width); pixels: when the units are the checkpoint's patches (patch_features == 3 * patch_size ** 2)
the patch-embedding convolution's weights with BLIP's image normalisation (CLIP mean / std, per channel); otherwise
a fresh Linear with (x - 0.5) / 0.5. The settings' architecture fields (width, layers, heads, mlp_ratio) are
replaced by the checkpoint's (vision values), the vocabulary size must match, and the settings' ids are written into
its text config (by `BlipModel`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from tokenforge.errors import TokenforgeError
from tokenforge.models.blip.hf_config import seeded
from tokenforge.models.blip.settings import BlipSettings, task_spec
from tokenforge.models.blip.stem import UnitStem, init_stem_from

SETTINGS_FILE = "blip_settings.json"
CONFIG_FILE = "blip_config.json"
WEIGHTS_FILE = "model.safetensors"


def write_model(model: nn.Module, folder: str | Path) -> None:
    """model.safetensors + blip_settings.json + blip_config.json of a `BlipModel` in `folder` (created)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Tied tensors (the decoder's output layer is its word embeddings) are stored once, under the first of their
    # names in sorted order, as safetensors' save_model does (load_model finds the ties on the model itself).
    # Without save_model's metadata {dropped: kept}: safetensors writes metadata from a hash map, in an order
    # that changes from save to save, so equal models gave different bytes about every second time.
    state = model.state_dict()
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        groups.setdefault(key, []).append(name)
    dropped = {name: sorted(names)[0] for names in groups.values() for name in sorted(names)[1:]}
    tensors = {name: t.contiguous() for name, t in state.items() if name not in dropped}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / SETTINGS_FILE).write_text(json.dumps(asdict(model.settings), indent=2) + "\n")
    (folder / CONFIG_FILE).write_text(json.dumps(model.hf.config.to_dict(), indent=2, sort_keys=True) + "\n")


def read_parts(folder: str | Path) -> tuple[BlipSettings, nn.Module, UnitStem]:
    """The settings, HF model and stem of a model saved by `write_model`, their weights still arbitrary
    (`load_weights` fills them); never reads the pretrained folder."""
    from transformers import BlipConfig

    folder = Path(folder)
    for name in (WEIGHTS_FILE, SETTINGS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise TokenforgeError(f"blip: {folder / name} not found (not a saved BLIP model folder)")
    try:
        settings = BlipSettings(**json.loads((folder / SETTINGS_FILE).read_text()))
        config = BlipConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    except (TypeError, ValueError) as error:
        raise TokenforgeError(f"blip: unreadable settings or config in {folder}: {error}") from None
    settings.check()
    codebook = torch.zeros(settings.num_codes, settings.code_dim) if settings.input == "tokens" else None
    with seeded(0):  # every value is overwritten by the saved weights
        hf = task_spec(settings.task).hf_type()(config)
        stem = UnitStem(settings, config.vision_config.hidden_size, codebook)
    return settings, hf, stem


def load_weights(model: nn.Module, folder: str | Path) -> None:
    """The saved weights of `folder` into `model` (built from `read_parts(folder)`), every one of them."""
    from safetensors.torch import load_model

    folder = Path(folder)
    missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise TokenforgeError(f"blip: {folder / WEIGHTS_FILE} does not fit the model (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")


def pretrained_parts(local_dir: str | Path, settings: BlipSettings, codebook: torch.Tensor | None = None,
                     seed: int = 0) -> tuple[BlipSettings, nn.Module, UnitStem]:
    """A local HF BLIP checkpoint and our stem for it (module doc: Pretrained), with the settings it implies; new
    parameters from `seed`."""
    path = Path(local_dir)
    if not path.is_dir():
        raise TokenforgeError(f"blip: pretrained folder {path} not found")
    settings = replace(settings, grid=tuple(settings.grid))
    spec = task_spec(settings.task)
    with seeded(seed):
        try:
            hf = spec.hf_type().from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise TokenforgeError(f"blip: cannot load a BLIP checkpoint from {path}: {str(error).splitlines()[0]}") from None
        vision, text = hf.config.vision_config, hf.config.text_config
        # The answer decoder's cross-attention, sized for image states (encoder_hidden_size), reads the question's.
        if spec.question and vision.hidden_size != text.hidden_size:
            raise TokenforgeError(f"blip: VQA needs equal vision and text widths, the checkpoint has {vision.hidden_size} and {text.hidden_size}")
        if text.vocab_size != settings.vocab_size:
            raise TokenforgeError(f"blip: vocab_size {settings.vocab_size} does not match the checkpoint's {text.vocab_size}")
        if settings.max_text_len > text.max_position_embeddings:
            raise TokenforgeError(f"blip: max_text_len {settings.max_text_len} exceeds the checkpoint's {text.max_position_embeddings} text positions")
        settings = replace(settings, width=vision.hidden_size, vision_layers=vision.num_hidden_layers,
                           text_layers=text.num_hidden_layers, heads=vision.num_attention_heads,
                           mlp_ratio=vision.intermediate_size / vision.hidden_size, pretrained=str(path))
        settings.check()
        old = hf.vision_model.embeddings
        stem = UnitStem(settings, vision.hidden_size, codebook)
        init_stem_from(stem, old, settings)
    return settings, hf, stem
