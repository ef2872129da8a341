"""The VQ tokenizer model: a small convolutional VQ autoencoder that turns an image into a grid of code ids.

The encoder shrinks the image by `downsample` with stride-2 convolutions to a grid of `code_dim` vectors; a
`vector_quantize_pytorch.VectorQuantize` layer (EMA codebook, k-means init, dead-code restarts) replaces each
vector by its nearest codebook entry; a mirrored decoder rebuilds the image. Training, pruning and the
statistics are in `tokenforge.tokenizer.train`; the `tokenizer` stage (tokenforge/cli/tokenizer.py) runs them.

After pruning (`VQTokenizer.prune`) the model keeps only some of its trained codes, in ascending order of their
trained id, renumbered 0..K'-1: `encode` picks the nearest kept code and returns its new id, `decode` and
`codebook` take new ids.

A tokenizer directory holds model.safetensors (weights, with the kept codes' trained ids as the `kept_codes`
buffer), config.json (shape of the model; "codebook_size" is the pruned K' every later stage sees,
"trained_codebook_size" the K it was trained with) and codebook.safetensors ({"codebook": (K', code_dim)
float32}). Later stages call `load_tokenizer(dir)` and its `encode`/`decode`, or just `load_codebook(dir)`.
A pretrained diffusers VQModel (`tokenizer.pretrained`, tokenforge.tokenizer.pretrained) writes the same folder,
and `load_tokenizer` returns it with the same interface.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from tokenforge.errors import TokenforgeError, one_line
from tokenforge.io import read_json, require_file, write_json
from tokenforge.tokenizer.codes import MAX_CODES, check_kept_codes, checked_ids  # here too: their home before `codes`

CONFIG_KEYS = (
    "image_size", "channels", "downsample", "grid", "codebook_size", "trained_codebook_size", "code_dim",
    "hidden_dim", "seed",
)
# Tokenizers written before pruning existed have no trained_codebook_size (and no kept_codes): all codes kept.
OPTIONAL_KEYS = ("trained_codebook_size",)
# VectorQuantize settings that only shape training, not the weights: a few k-means iterations on the first
# batch seed the codebook from real encoder outputs; a code whose EMA cluster size falls below 1 vector
# per batch is restarted from a random encoder output, which keeps most of a small codebook in use.
KMEANS_ITERS = 5
EMA_DECAY = 0.8
DEAD_CODE_THRESHOLD = 1.0


# ---------------------------------------------------------------------------------------------- config


def make_config(
    image_size: tuple[int, int],
    channels: int,
    downsample: int,
    codebook_size: int,
    code_dim: int,
    hidden_dim: int,
    seed: int,
) -> dict[str, Any]:
    """The model's shape as stored in config.json; raises TokenforgeError naming the bad option."""
    height, width = (int(s) for s in image_size)
    if downsample < 1 or downsample & (downsample - 1) or height % downsample or width % downsample:
        raise TokenforgeError(
            f"--downsample {downsample}: must be a power of 2 that divides the image size {height}x{width}"
        )
    if not 2 <= codebook_size <= MAX_CODES:
        raise TokenforgeError(f"--codebook-size {codebook_size}: must be between 2 and {MAX_CODES}")
    for option, value in (("--code-dim", code_dim), ("--hidden-dim", hidden_dim), ("channels", channels)):
        if value < 1:
            raise TokenforgeError(f"{option} {value}: must be at least 1")
    return {
        "image_size": [height, width],
        "channels": int(channels),
        "downsample": int(downsample),
        "grid": [height // downsample, width // downsample],
        "codebook_size": int(codebook_size),
        "trained_codebook_size": int(codebook_size),
        "code_dim": int(code_dim),
        "hidden_dim": int(hidden_dim),
        "seed": int(seed),
    }


# ---------------------------------------------------------------------------------------------- model


class VQTokenizer(nn.Module):
    """Conv encoder -> VectorQuantize -> conv decoder. `config` is the dict from `make_config`.

    The encoder's output has `code_dim` channels, the codebook's dimension, so VectorQuantize needs no
    projection. VectorQuantize holds all `trained_codebook_size` codes; the `kept_codes` buffer lists the
    trained ids of the `codebook_size` codes in use (all of them until `prune`), and `codebook`, `encode`
    and `decode` see only those, numbered 0..codebook_size-1.
    """

    def __init__(self, config: dict[str, Any], commitment: float = 0.25) -> None:
        super().__init__()
        self.config = dict(config)
        channels, hidden, code_dim = config["channels"], config["hidden_dim"], config["code_dim"]
        steps = int(math.log2(config["downsample"]))
        act = nn.GELU
        encoder: list[nn.Module] = [nn.Conv2d(channels, hidden, 3, padding=1), act()]
        decoder: list[nn.Module] = [nn.Conv2d(code_dim, hidden, 3, padding=1), act()]
        for _ in range(steps):
            encoder += [nn.Conv2d(hidden, hidden, 4, stride=2, padding=1), act()]
            decoder += [nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1), act()]
        encoder += [nn.Conv2d(hidden, hidden, 3, padding=1), act(), nn.Conv2d(hidden, code_dim, 1)]
        decoder += [nn.Conv2d(hidden, hidden, 3, padding=1), act(), nn.Conv2d(hidden, channels, 3, padding=1)]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder, nn.Sigmoid())
        self.vq = VectorQuantize(
            dim=code_dim,
            codebook_size=trained_size(config),
            decay=EMA_DECAY,
            kmeans_init=True,
            kmeans_iters=KMEANS_ITERS,
            threshold_ema_dead_code=DEAD_CODE_THRESHOLD,
            commitment_weight=commitment,  # shapes training only, so it is not in config.json
            accept_image_fmap=True,
        )
        # Sized by the config so that loading a pruned checkpoint into the wrong config fails on its shape.
        self.register_buffer("kept_codes", torch.arange(config["codebook_size"], dtype=torch.long))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass on float NCHW in [0,1] over all trained codes: (reconstruction, trained ids, VQ loss)."""
        quantized, ids, vq_loss = self.vq(self.encoder(x))
        return self.decoder(quantized), ids, vq_loss

    @property
    def codebook(self) -> torch.Tensor:
        """(codebook_size, code_dim) float: a detached copy of the kept vectors, row i is code id i."""
        return self._kept_vectors().detach().float().cpu().clone()

    def _kept_vectors(self) -> torch.Tensor:
        return self.vq.codebook[self.kept_codes]

    @torch.no_grad()
    def prune(self, kept: np.ndarray | torch.Tensor) -> None:
        """Keep only the codes with trained ids `kept` (strictly increasing); they become ids 0..len(kept)-1.

        Ascending order keeps ties in `encode` going to the same vector as before pruning.
        """
        kept = torch.as_tensor(np.asarray(kept), dtype=torch.long)
        check_kept_codes(kept, trained_size(self.config), "kept codes")
        self.kept_codes = kept.clone().to(self.kept_codes.device)
        self.config["codebook_size"] = len(kept)

    @torch.no_grad()
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images -> CPU LongTensor (N, h, w) of code ids (nearest kept code), computed on the model's
        device. Never changes the codebook."""
        z = self.encoder(self._to_input(images).to(self._device()))
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        embed = self._kept_vectors().to(flat.dtype)
        # Squared distances, as VectorQuantize computes them, without its training-time EMA updates.
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed.T + embed.pow(2).sum(1)
        return dist.argmin(dim=1).reshape(n, h, w).cpu()

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """LongTensor (N, h, w) of code ids -> CPU float images (N, C, H, W) in [0,1], computed on the model's device."""
        ids = checked_ids(ids, self.config["codebook_size"])
        vectors = self._kept_vectors()[ids.to(self._device())].permute(0, 3, 1, 2)
        return self.decoder(vectors).cpu()

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _to_input(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images)
        want = (*self.config["image_size"], self.config["channels"])
        if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise TokenforgeError(
                f"images: expected uint8 (N, {want[0]}, {want[1]}, {want[2]}), got {x.dtype} {tuple(x.shape)}"
            )
        return to_float(x)


def trained_size(config: dict[str, Any]) -> int:
    """Codes the tokenizer was trained with (config.json from before pruning has only codebook_size)."""
    return int(config.get("trained_codebook_size", config["codebook_size"]))


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (array or tensor) -> float32 NCHW in [0,1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float().div(255.0)


def build_model(config: dict[str, Any], commitment: float = 0.25) -> VQTokenizer:
    """A fresh VQTokenizer for `config` (initialised from torch's global RNG)."""
    return VQTokenizer(config, commitment)


# ---------------------------------------------------------------------------------------------- save / load


def save_tokenizer(model: VQTokenizer, out_dir: Path) -> None:
    """Write model.safetensors, codebook.safetensors and config.json into `out_dir` (an existing directory)."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"))
    save_file({"codebook": model.codebook.contiguous()}, str(out_dir / "codebook.safetensors"))
    write_json(out_dir / "config.json", model.config)


def _read_config(config_path: Path) -> dict[str, Any]:
    config = read_json(config_path)
    required = [key for key in CONFIG_KEYS if key not in OPTIONAL_KEYS]
    missing = [key for key in required if not isinstance(config, dict) or key not in config]
    if missing:
        raise TokenforgeError(f"{config_path}: missing key(s) {', '.join(missing)}")
    return config


def load_tokenizer(path: str | Path) -> VQTokenizer:
    """The VQTokenizer saved in directory `path`, in eval mode. Reads only safetensors, never pickles.

    A folder whose config.json has a "kind" holds a pretrained model instead (`tokenizer.pretrained`), with the
    same interface: `encode`, `decode`, `codebook`, `config`.
    """
    path = Path(path)
    config_path = path / "config.json"
    config = _read_config(config_path)
    if config.get("kind") is not None:
        from tokenforge.tokenizer.pretrained import load_pretrained

        return load_pretrained(path, config)
    try:
        model = build_model(config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TokenforgeError(f"{config_path}: invalid model config ({exc})") from None
    weights = require_file(path / "model.safetensors", "tokenizer weights")
    try:
        state = load_file(str(weights))
        if "trained_codebook_size" not in config:  # written before pruning existed: every code is kept
            state.setdefault("kept_codes", model.kept_codes)
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise TokenforgeError(f"{weights}: weights do not match {config_path.name} ({one_line(exc, lines=3)})") from None
    check_kept_codes(model.kept_codes.numpy(), trained_size(config), f"{weights}: kept_codes")
    return model.eval()


def load_codebook(path: str | Path) -> torch.Tensor:
    """The (codebook_size, code_dim) float32 codebook from codebook.safetensors.

    `path` is the tokenizer directory or the file itself; config.json beside it must agree on the shape.
    """
    path = Path(path)
    file = path / "codebook.safetensors" if path.is_dir() else path
    require_file(file, "codebook")
    config_path = file.parent / "config.json"
    config = _read_config(config_path)
    try:
        codebook = load_file(str(file)).get("codebook")
    except (SafetensorError, OSError) as exc:
        raise TokenforgeError(f"{file}: not a readable safetensors file ({one_line(exc, lines=3)})") from None
    want = (config["codebook_size"], config["code_dim"])
    if codebook is None or tuple(codebook.shape) != tuple(want) or not codebook.is_floating_point():
        got = "no 'codebook' tensor" if codebook is None else f"codebook {codebook.dtype} {tuple(codebook.shape)}"
        raise TokenforgeError(
            f"{file}: {got}, but {config_path.name} says codebook_size {want[0]}, code_dim {want[1]}"
        )
    return codebook.float()
