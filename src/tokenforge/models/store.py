"""Saving and loading a TokenViT: `model.safetensors` (weights, codebook included) + `model.json` (its ModelConfig).

Safetensors only: loading unpickles nothing. Non-persistent buffers (routed attention's full-grid span masks) are
not saved: the model rebuilds them from its config. `tokenforge.models.vit` re-exports `save_model` and `load_model`
(it imports this module, which imports the model itself from models.tokenvit).

A prompted model (VPT, `prompt_tokens` > 0) is saved whole, frozen backbone included, so every stage loads it on
its own; model.json adds `backbone_sha256`, the digest of the frozen tensors (`backbone_digest`: every state-dict
entry but the prompts and the head), which names the backbone a task's model was tuned from and which
`load_model` checks: weights whose frozen part changed fail to load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tokenforge.errors import TokenforgeError
from tokenforge.models.config import ModelConfig, is_tuned

if TYPE_CHECKING:  # the model imports torch and timm: loading imports it where it builds one
    from tokenforge.models.tokenvit import TokenViT


# Model options added after the first release, left out of model.json while off: a plain model's config stays
# byte for byte what it was, and reading fills them in with these defaults.
OPTIONS_OFF = {"prompts": 0, "mask_token": False, "attention": "global", "orders": (0, 1, 2, 3), "routing": "soft",
               "prompt_tokens": 0, "prompt_deep": False, "prompt_dropout": 0.0, "backbone_sha256": None, "extra_options": {}}


# Settings of an option: left out with it while it is off, always written while it is on (a routed model's
# model.json says its orders and routing, defaults included).
SETTINGS_OF = {"orders": "attention", "routing": "attention", "prompt_deep": "prompt_tokens", "prompt_dropout": "prompt_tokens",
               "backbone_sha256": "prompt_tokens"}


def backbone_digest(model: TokenViT) -> str:
    """sha256 over the frozen part of a model's state dict (every entry `is_tuned` leaves out): names, dtypes, shapes
    and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if is_tuned(name):
            continue
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def config_dict(config: ModelConfig) -> dict:
    """The config as written to model.json: every field, but model options that are off."""
    raw = asdict(config)

    def off(key: str) -> bool:
        option = SETTINGS_OF.get(key, key)
        return raw[key] == OPTIONS_OFF[key] and raw[option] == OPTIONS_OFF[option]

    return {k: v for k, v in raw.items() if not (k in OPTIONS_OFF and off(k))}


def save_model(model: TokenViT, directory: Path) -> None:
    """`model.safetensors` (weights, codebook included) + `model.json` (its config)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    config = replace(model.config, backbone_sha256=backbone_digest(model) if model.config.prompt_tokens else None)
    (directory / "model.json").write_text(json.dumps(config_dict(config), indent=2) + "\n")


def read_config(path: Path) -> ModelConfig:
    """The ModelConfig in a `model.json` (fields added since it was written take their defaults)."""
    try:
        raw = json.loads(path.read_text())
        return ModelConfig(**{**raw, "grid": tuple(raw["grid"])})  # orders: ModelConfig makes the list a tuple
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise TokenforgeError(f"{path}: not a tokenforge model config ({exc})") from None


def load_model(directory: Path) -> TokenViT:
    """Load a TokenViT saved by `save_model` (safetensors only: nothing is unpickled), in eval mode."""
    from safetensors.torch import load_file

    from tokenforge.models.tokenvit import TokenViT

    directory = Path(directory)
    cfg_path, weights = directory / "model.json", directory / "model.safetensors"
    for path in (cfg_path, weights):
        if not path.is_file():
            raise TokenforgeError(f"{path}: model file not found")
    config = read_config(cfg_path)
    state = load_file(str(weights))
    model = TokenViT(config, state.get("codebook"))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TokenforgeError(f"{weights}: weights do not match {cfg_path.name} ({str(exc).splitlines()[0]})") from None
    if config.backbone_sha256 is not None and backbone_digest(model) != config.backbone_sha256:
        raise TokenforgeError(f"{weights}: the frozen backbone's digest differs from backbone_sha256 in {cfg_path.name}")
    return model.eval()
