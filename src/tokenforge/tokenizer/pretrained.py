"""Pretrained VQ tokenizers: a local diffusers `VQModel` folder (LDM's VQ-f4/f8/f16, VQGAN conversions, aMUSEd's VQ)
used in place of a trained `VQTokenizer`.

  tokenforge tokenizer --shards results/shard --out results/tokenizer --pretrained /models/vq-f4

`from_folder(DIR, ...)` reads a folder in diffusers' `save_pretrained` layout (config.json with "_class_name":
"VQModel" and its weights; nothing is downloaded) and wraps it in a `PretrainedVQ`, which has the interface of
`VQTokenizer` that later stages use: `encode` (uint8 NHWC -> ids), `decode`, `codebook`, `config`, `prune`. So the
`tokenizer` stage prunes and measures it like a trained one (tokenforge/cli/tokenizer.py) and writes the same
folder with `vq.save_tokenizer`: model.safetensors holds a float32 copy of every VQModel weight (keys "vqmodel.*")
and the `kept_codes` buffer, config.json the usual keys plus "kind" (KIND), "vqmodel" (the VQModel's own config)
and "pretrained" (DIR, where it came from); the run folder needs DIR no more. `vq.load_tokenizer` sees the kind
and calls `load_pretrained`.

Images go in as diffusers' VQ models expect them: [-1, 1], grey images repeated to 3 channels for a 3-channel
model (and its 3-channel reconstruction averaged back to grey), at the shards' size (a VQModel is convolutional;
its sample_size is only a hint: aMUSEd's VQ says 32 and encodes 512 px images). The grid is the image size / 2**(number of
down blocks - 1); the codebook is `quantize.embedding.weight` (vq_embed_dim vectors); encoding is
`VQModel.encode(x).latents` (encoder, then quant_conv) and the nearest kept code by Euclidean distance
(`torch.cdist`, as diffusers' VectorQuantizer picks it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tokenforge.errors import TokenforgeError, one_line
from tokenforge.io import require_file
from tokenforge.tokenizer.codes import check_kept_codes, checked_ids

log = logging.getLogger(__name__)

KIND = "diffusers-vqmodel"  # config.json's "kind" for this tokenizer; a trained VQTokenizer has none
# Pixels per forward pass, whatever batch the caller hands over (8 images of 256x256, 2048 of 16x16): LDM's VQ-f4
# holds 128 channels at full resolution, 32 MB of float32 per 256x256 image and tensor, several tensors at once;
# a tokenize batch of 512 such images in one pass would need tens of GB.
CHUNK_PIXELS = 8 * 256 * 256
WHAT = "a local diffusers VQModel folder written by save_pretrained"


class PretrainedVQ(nn.Module):
    """A diffusers VQModel as a tokenizer over its kept codes (all of them until `prune`), numbered 0..K'-1.

    `config` is the tokenizer's config.json (`make_config`); the `kept_codes` buffer lists the VQModel's ids of the
    codes in use, ascending, so ties in `encode` go to the same vector as in the unpruned model.
    """

    def __init__(self, vqmodel: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.vqmodel = vqmodel.eval()
        self.config = dict(config)
        self.register_buffer("kept_codes", torch.arange(config["codebook_size"], dtype=torch.long))

    @property
    def codebook(self) -> torch.Tensor:
        """(codebook_size, code_dim) float32 on the CPU: the kept vectors, row i is code id i."""
        return self._kept_vectors().detach().float().cpu().clone()

    def _kept_vectors(self) -> torch.Tensor:
        return self.vqmodel.quantize.embedding.weight[self.kept_codes]

    def _device(self) -> torch.device:
        return self.kept_codes.device

    @torch.no_grad()
    def prune(self, kept: np.ndarray | torch.Tensor) -> None:
        """Keep only the codes with VQModel ids `kept` (strictly increasing); they become ids 0..len(kept)-1."""
        kept = torch.as_tensor(np.asarray(kept), dtype=torch.long)
        check_kept_codes(kept, self.config["trained_codebook_size"], "kept codes")
        self.kept_codes = kept.to(self._device())
        self.config["codebook_size"] = len(kept)

    @torch.no_grad()
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images -> CPU LongTensor (N, h, w) of code ids (nearest kept code), a chunk at a time."""
        x, step = self._check_images(images), self._chunk()
        parts = [self._encode_chunk(x[i : i + step]) for i in range(0, len(x), step)]
        return torch.cat(parts) if parts else torch.zeros((0, *self.config["grid"]), dtype=torch.long)

    def _encode_chunk(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self._device()).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # [0, 255] -> [-1, 1]
        in_channels = self.vqmodel.config.in_channels
        if x.shape[1] != in_channels:  # grey images for an RGB model (make_config allows no other mismatch)
            x = x.expand(-1, in_channels, -1, -1)
        latents = self.vqmodel.encode(x).latents  # quant_conv applied: vectors in the codebook's space
        n, d, h, w = latents.shape
        if [h, w] != list(self.config["grid"]):
            raise TokenforgeError(f"tokenizer.pretrained {self.config['pretrained']}: encodes to a {h}x{w} grid, "
                                  f"expected {self.config['grid']} (its down blocks do not halve the size each)")
        flat = latents.permute(0, 2, 3, 1).reshape(-1, d)
        return torch.cdist(flat, self._kept_vectors().to(flat.dtype)).argmin(dim=1).reshape(n, h, w).cpu()

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """LongTensor (N, h, w) of code ids -> CPU float images (N, C, H, W) in [0,1], C the images' channels."""
        ids = checked_ids(ids, self.config["codebook_size"])
        step = self._chunk()
        parts = [self._decode_chunk(ids[i : i + step]) for i in range(0, len(ids), step)]
        return torch.cat(parts) if parts else torch.zeros((0, self.config["channels"], *self.config["image_size"]))

    def _decode_chunk(self, ids: torch.Tensor) -> torch.Tensor:
        vq, original = self.vqmodel, self.kept_codes[ids.to(self._device())]
        if vq.config.get("lookup_from_codebook", False):  # aMUSEd's: decode takes the ids and looks them up itself
            n, h, w = ids.shape
            shape = (n, h, w, self.config["code_dim"])
            out = vq.decode(original.reshape(-1), force_not_quantize=True, shape=shape).sample
        else:  # the codebook vectors, not quantized again (decode's default would re-pick them from all codes)
            out = vq.decode(vq.quantize.embedding(original).permute(0, 3, 1, 2), force_not_quantize=True).sample
        out = out.float().add(1.0).div(2.0).clamp(0.0, 1.0)
        if out.shape[1] != self.config["channels"]:  # an RGB model on grey images: back to grey
            out = out.mean(dim=1, keepdim=True)
        return out.cpu()

    def _chunk(self) -> int:
        """Images per forward pass: CHUNK_PIXELS worth, at least one."""
        height, width = self.config["image_size"]
        return max(1, CHUNK_PIXELS // (height * width))

    def _check_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images)
        want = (*self.config["image_size"], self.config["channels"])
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise TokenforgeError(
                f"images: expected uint8 (N, {want[0]}, {want[1]}, {want[2]}), got {x.dtype} {tuple(x.shape)}"
            )
        return x


# ---------------------------------------------------------------------------------------------- the folder


def read_vq_config(source: str | Path) -> dict[str, Any]:
    """The config.json of a diffusers VQModel folder; anything else is one line naming tokenizer.pretrained."""
    source = Path(source)
    where = f"tokenizer.pretrained {source}"
    if not source.is_dir():
        raise TokenforgeError(f"{where}: no such directory; expected {WHAT}")
    if not (source / "config.json").is_file():
        raise TokenforgeError(f"{where}: no config.json; expected {WHAT}")
    try:
        config = json.loads((source / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TokenforgeError(f"{where}: config.json is not valid JSON; expected {WHAT}") from None
    name = config.get("_class_name", "VQModel") if isinstance(config, dict) else None
    if name != "VQModel" or "num_vq_embeddings" not in config:
        raise TokenforgeError(f"{where}: config.json describes {name or 'no model'}, not a diffusers VQModel")
    return config


def make_config(vq_config: dict[str, Any], source: Path, image_size, channels: int, seed: int) -> dict[str, Any]:
    """The tokenizer's config.json for a VQModel with config `vq_config` on images of this size and channels."""
    where = f"tokenizer.pretrained {source}"
    height, width = (int(s) for s in image_size)
    in_channels, out_channels = int(vq_config.get("in_channels", 3)), int(vq_config.get("out_channels", 3))
    if channels not in (in_channels, 1) or out_channels not in (in_channels, channels):
        raise TokenforgeError(f"{where}: the model takes {in_channels}-channel images and gives {out_channels}, the "
                              f"shards hold {channels}-channel images (shard.channels: {in_channels} converts them)")
    factor = 2 ** (len(vq_config.get("block_out_channels", [64])) - 1)  # every down block but the last halves
    if height % factor or width % factor:
        raise TokenforgeError(f"{where}: downsamples by {factor}, which does not divide the image size "
                              f"{height}x{width} (set shard.image_size to a multiple of {factor})")
    sample = vq_config.get("sample_size", [height, width])
    sample = [int(s) for s in (sample if isinstance(sample, (list, tuple)) else (sample, sample))]
    if sample != [height, width]:  # only a hint: aMUSEd's VQ says 32 and encodes 256 and 512 px images
        log.warning("%s: its sample_size is %dx%d, the shards hold %dx%d images (shard.image_size resizes them)",
                    where, sample[0], sample[1], height, width)
    codes = int(vq_config["num_vq_embeddings"])
    return {
        "kind": KIND,
        "pretrained": str(source.resolve()),
        "image_size": [height, width],
        "channels": int(channels),
        "downsample": factor,
        "grid": [height // factor, width // factor],
        "codebook_size": codes,
        "trained_codebook_size": codes,
        "code_dim": int(vq_config.get("vq_embed_dim") or vq_config.get("latent_channels", 3)),
        "hidden_dim": None,  # a trained VQTokenizer's conv width; a VQModel has one per block (in "vqmodel")
        "seed": int(seed),
        "vqmodel": {k: v for k, v in vq_config.items() if not k.startswith("_")},
    }


def from_folder(source: str | Path, image_size, channels: int, seed: int) -> PretrainedVQ:
    """The VQModel in DIR `source` (save_pretrained layout, read locally) as a tokenizer of these images."""
    from diffusers import VQModel

    source = Path(source)
    config = make_config(read_vq_config(source), source, image_size, channels, seed)
    try:
        vqmodel = VQModel.from_pretrained(
            str(source), local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise TokenforgeError(f"tokenizer.pretrained {source}: cannot load its VQModel ({one_line(exc, 2)})") from None
    return PretrainedVQ(vqmodel, config).eval()


def load_pretrained(path: str | Path, config: dict[str, Any]) -> PretrainedVQ:
    """The PretrainedVQ saved in tokenizer directory `path` (config.json already read into `config`), in eval mode.

    Builds the VQModel from config.json's "vqmodel" and loads model.safetensors: never DIR, never pickles.
    """
    from diffusers import VQModel

    path = Path(path)
    config_path = path / "config.json"
    if config.get("kind") != KIND:
        raise TokenforgeError(f"{config_path}: unknown tokenizer kind {config.get('kind')!r} (known: {KIND!r})")
    if not isinstance(config.get("vqmodel"), dict):
        raise TokenforgeError(f"{config_path}: missing key vqmodel (the diffusers VQModel config)")
    try:
        model = PretrainedVQ(VQModel.from_config(config["vqmodel"]), config)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise TokenforgeError(f"{config_path}: invalid vqmodel config ({one_line(exc, 2)})") from None
    weights = require_file(path / "model.safetensors", "tokenizer weights")
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise TokenforgeError(f"{weights}: weights do not match {config_path.name} ({one_line(exc, 3)})") from None
    check_kept_codes(model.kept_codes.numpy(), config["trained_codebook_size"], f"{weights}: kept_codes")
    return model.eval()
