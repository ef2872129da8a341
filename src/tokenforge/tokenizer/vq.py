"""Train the VQ tokenizer: a small convolutional VQ autoencoder that turns an image into a grid of code ids.

  tokenforge tokenizer --shards results/shard --out results/tokenizer --codebook-size 64 --downsample 2

The encoder shrinks the image by --downsample with stride-2 convolutions to a grid of --code-dim vectors; a
`vector_quantize_pytorch.VectorQuantize` layer (EMA codebook, k-means init, dead-code restarts) replaces
each vector by its nearest codebook entry; a mirrored decoder rebuilds the image. Loss: pixel MSE plus the
VQ commitment loss. It trains on the shards' train split and reports reconstruction PSNR on the test split.

After training, the codebook is pruned to the codes that encoding the train split actually uses (SeiT pruned
8192 -> 391), in ascending order of their trained id, and ids are renumbered 0..K'-1: `encode` picks the
nearest kept code and returns its new id, `decode` and `codebook` take new ids. --no-prune keeps every code.

Writes into --out: model.safetensors (weights, with the kept codes' trained ids as the `kept_codes` buffer),
config.json (shape of the model; "codebook_size" is the pruned K' every later stage sees,
"trained_codebook_size" the K it was trained with), codebook.safetensors ({"codebook": (K', code_dim)
float32}, read by `load_codebook`), reconstructions.png (up to 16 test images by key above their
reconstructions) and stats.json (mse, psnr, codebook usage, used codes, perplexity, wall_s). Later stages call
`load_tokenizer(dir)` and its `encode`/`decode`, or just `load_codebook(dir)`.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json, require_file, write_json
from tokenforge.runtime import progress, seed_everything

log = logging.getLogger(__name__)

CONFIG_KEYS = (
    "image_size", "channels", "downsample", "grid", "codebook_size", "trained_codebook_size", "code_dim",
    "hidden_dim", "seed",
)
# Tokenizers written before pruning existed have no trained_codebook_size (and no kept_codes): all codes kept.
OPTIONAL_KEYS = ("trained_codebook_size",)
# `tokenforge tokenize` packs ids with at most 16 bits each.
MAX_CODES = 65536
# The reconstruction grid: this many test images, each scaled up (nearest neighbour) to at least GRID_TILE px.
GRID_IMAGES = 16
GRID_TILE = 64
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


def __getattr__(name: str):
    # `VQTokenizer` subclasses torch's nn.Module, so it is built on first use: importing this module (as
    # `tokenforge --help` does for every stage) must not import torch. The class is made once and cached,
    # so isinstance checks and pickling see one class.
    if name == "VQTokenizer":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _model_class() -> type:
    import torch
    from torch import nn
    from vector_quantize_pytorch import VectorQuantize

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
            return self._kept_vectors().detach().clone().float()

        def _kept_vectors(self) -> torch.Tensor:
            return self.vq.codebook[self.kept_codes]

        @torch.no_grad()
        def prune(self, kept: np.ndarray | torch.Tensor) -> None:
            """Keep only the codes with trained ids `kept` (strictly increasing); they become ids 0..len(kept)-1.

            Ascending order keeps ties in `encode` going to the same vector as before pruning.
            """
            kept = torch.as_tensor(np.asarray(kept), dtype=torch.long)
            check_kept_codes(kept, trained_size(self.config), "kept codes")
            self.kept_codes = kept.clone()
            self.config["codebook_size"] = len(kept)

        @torch.no_grad()
        def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
            """uint8 NHWC images -> LongTensor (N, h, w) of code ids (nearest kept code). Never changes the codebook."""
            z = self.encoder(self._to_input(images))
            n, d, h, w = z.shape
            flat = z.permute(0, 2, 3, 1).reshape(-1, d)
            embed = self._kept_vectors().to(flat.dtype)
            # Squared distances, as VectorQuantize computes them, without its training-time EMA updates.
            dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed.T + embed.pow(2).sum(1)
            return dist.argmin(dim=1).reshape(n, h, w)

        @torch.no_grad()
        def decode(self, ids: torch.Tensor) -> torch.Tensor:
            """LongTensor (N, h, w) of code ids -> float images (N, C, H, W) in [0,1]."""
            ids = torch.as_tensor(ids, dtype=torch.long)
            size = self.config["codebook_size"]
            if ids.ndim != 3 or ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
                raise TokenforgeError(f"ids: expected (N, h, w) ids in [0, {size}), got shape {tuple(ids.shape)}")
            vectors = self._kept_vectors()[ids].permute(0, 3, 1, 2)
            return self.decoder(vectors)

        def _to_input(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
            x = torch.as_tensor(images)
            want = (*self.config["image_size"], self.config["channels"])
            if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != want:
                raise TokenforgeError(
                    f"images: expected uint8 (N, {want[0]}, {want[1]}, {want[2]}), got {x.dtype} {tuple(x.shape)}"
                )
            return to_float(x)

    VQTokenizer.__module__, VQTokenizer.__qualname__ = __name__, "VQTokenizer"  # where pickle finds it
    return VQTokenizer


def trained_size(config: dict[str, Any]) -> int:
    """Codes the tokenizer was trained with (config.json from before pruning has only codebook_size)."""
    return int(config.get("trained_codebook_size", config["codebook_size"]))


def check_kept_codes(kept, trained: int, where: str) -> None:
    """`kept` must be strictly increasing trained ids in [0, trained), at least one."""
    kept = np.asarray(kept)
    if kept.ndim != 1 or not len(kept) or kept[0] < 0 or kept[-1] >= trained or np.any(np.diff(kept) <= 0):
        raise TokenforgeError(f"{where}: expected strictly increasing code ids in [0, {trained}), at least one")


def to_float(images):
    """uint8 NHWC (array or tensor) -> float32 NCHW in [0,1]."""
    import torch

    return torch.as_tensor(images).permute(0, 3, 1, 2).float().div(255.0)


def build_model(config: dict[str, Any], commitment: float = 0.25):
    """A fresh VQTokenizer for `config` (initialised from torch's global RNG)."""
    return _model_class()(config, commitment)


# ---------------------------------------------------------------------------------------------- training


def train_tokenizer(
    images: np.ndarray,
    config: dict[str, Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    commitment: float = 0.25,
    tracker=None,
):
    """Train a VQTokenizer on uint8 NHWC `images`; returns (model in eval mode, mean loss per epoch).

    Seeded by config["seed"]: same images, config and arguments give the same weights on a CPU.
    """
    import torch
    import torch.nn.functional as F

    for option, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--lr", lr)):
        if value <= 0:
            raise TokenforgeError(f"{option} {value}: must be positive")
    seed_everything(config["seed"])
    model = build_model(config, commitment).train()
    x_all = to_float(images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(config["seed"])
    losses = []
    bar = progress(range(epochs), total=epochs, desc="tokenizer", unit="epoch")
    for epoch in bar:
        total, seen = 0.0, 0
        for idx in torch.randperm(len(x_all), generator=order).split(batch_size):
            x = x_all[idx]
            recon, _, vq_loss = model(x)
            loss = F.mse_loss(recon, x) + vq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        losses.append(total / seen)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if tracker is not None:
            tracker.log_metrics({"train_loss": losses[-1]}, step=epoch)
    return model.eval(), losses


# ---------------------------------------------------------------------------------------------- evaluation


def encode_all(model, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Code ids (N, h, w) int64 of every image, encoded in batches."""
    parts = [model.encode(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, *model.config["grid"]), dtype=np.int64)


def reconstruction_mse(model, images: np.ndarray, batch_size: int = 512) -> float:
    """Mean squared error of decode(encode(x)) against x, both in [0,1], over all pixels."""
    total, count = 0.0, 0
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        recon = model.decode(model.encode(batch))
        total += float((recon - to_float(batch)).pow(2).sum())
        count += recon.numel()
    if count == 0:
        raise TokenforgeError("images: no images to evaluate the tokenizer on")
    return total / count


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of images in [0,1]."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def code_stats(ids: np.ndarray, codebook_size: int) -> dict[str, float]:
    """How much of the codebook `ids` use: fraction and count of codes used, perplexity of their frequencies."""
    counts = np.bincount(np.asarray(ids).ravel(), minlength=codebook_size).astype(np.float64)
    freq = counts / max(counts.sum(), 1.0)
    nonzero = freq[freq > 0]
    return {
        "codebook_usage": float((counts > 0).mean()),
        "used_codes": int((counts > 0).sum()),
        "perplexity": float(np.exp(-(nonzero * np.log(nonzero)).sum())),
    }


# ---------------------------------------------------------------------------------------------- save / load


def save_tokenizer(model, out_dir: Path) -> None:
    """Write model.safetensors, codebook.safetensors and config.json into `out_dir` (an existing directory)."""
    from safetensors.torch import save_file

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


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])


def load_tokenizer(path: str | Path):
    """The VQTokenizer saved in directory `path`, in eval mode. Reads only safetensors, never pickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config_path = path / "config.json"
    config = _read_config(config_path)
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
        raise TokenforgeError(f"{weights}: weights do not match {config_path.name} ({_one_line(exc)})") from None
    check_kept_codes(model.kept_codes.numpy(), trained_size(config), f"{weights}: kept_codes")
    return model.eval()


def load_codebook(path: str | Path):
    """The (codebook_size, code_dim) float32 codebook from codebook.safetensors.

    `path` is the tokenizer directory or the file itself; config.json beside it must agree on the shape.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    file = path / "codebook.safetensors" if path.is_dir() else path
    require_file(file, "codebook")
    config_path = file.parent / "config.json"
    config = _read_config(config_path)
    try:
        codebook = load_file(str(file)).get("codebook")
    except (SafetensorError, OSError) as exc:
        raise TokenforgeError(f"{file}: not a readable safetensors file ({_one_line(exc)})") from None
    want = (config["codebook_size"], config["code_dim"])
    if codebook is None or tuple(codebook.shape) != tuple(want) or not codebook.is_floating_point():
        got = "no 'codebook' tensor" if codebook is None else f"codebook {codebook.dtype} {tuple(codebook.shape)}"
        raise TokenforgeError(
            f"{file}: {got}, but {config_path.name} says codebook_size {want[0]}, code_dim {want[1]}"
        )
    return codebook.float()


# ---------------------------------------------------------------------------------------------- grid


def reconstruction_grid(model, images: np.ndarray) -> np.ndarray:
    """uint8 (H', W', C) picture: `images` (uint8 NHWC) in a row on top, their reconstructions below.

    Each image is scaled up by nearest neighbour to at least GRID_TILE px, so 8x8 digits stay visible;
    2 px grey gaps separate them.
    """
    import torch

    recon = model.decode(model.encode(images)).permute(0, 2, 3, 1).mul(255).round().clamp(0, 255)
    recon = recon.to(torch.uint8).numpy()
    n, h, w, c = images.shape
    scale, gap = max(1, -(-GRID_TILE // max(h, w))), 2
    th, tw = h * scale, w * scale
    canvas = np.full((2 * th + 3 * gap, n * (tw + gap) + gap, c), 128, dtype=np.uint8)
    for row, batch in enumerate((images, recon)):
        y = gap + row * (th + gap)
        for i, image in enumerate(batch):
            x = gap + i * (tw + gap)
            canvas[y : y + th, x : x + tw] = image.repeat(scale, axis=0).repeat(scale, axis=1)
    return canvas


def save_reconstruction_grid(model, image_set, path: Path) -> None:
    """reconstructions.png of the first GRID_IMAGES images of `image_set` by key (the caller makes it atomic)."""
    from PIL import Image

    first = sorted(range(len(image_set.keys)), key=image_set.keys.__getitem__)[:GRID_IMAGES]
    canvas = reconstruction_grid(model, image_set.images[first])
    Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas).save(path, format="PNG")


# ---------------------------------------------------------------------------------------------- stage


def _load_splits(shards: Path):
    """(train, test or None) ImageSets of the shard stage; its stats.json says whether there is a test split."""
    from tokenforge.data.shards import load_split

    stats_path = shards / "stats.json"
    stats = read_json(stats_path)
    counts = stats.get("counts") if isinstance(stats, dict) else None
    if not isinstance(counts, dict):
        raise TokenforgeError(f"{stats_path}: missing key counts")
    train = load_split(shards, "train")
    test = load_split(shards, "test") if counts.get("test") else None
    if test is None:
        log.warning("%s: no test split; reporting reconstruction on the train split", shards)
    return train, test


def prune_to_used(model, images: np.ndarray, prune: bool = True) -> dict[str, float]:
    """Prune `model` (trained, not yet pruned) to the codes encoding `images` uses; return the usage stats.

    codebook_usage and used_codes count the trained codes in use; perplexity is that of the new ids (a
    renumbering, so the same as before pruning). With prune=False every code is kept.
    """
    trained = trained_size(model.config)
    ids = encode_all(model, images)
    kept = np.unique(ids) if prune else np.arange(trained)
    model.prune(kept)
    used = code_stats(ids, trained)
    pruned = code_stats(np.searchsorted(kept, ids), len(kept))
    return {
        "codebook_usage": used["codebook_usage"],
        "used_codes": used["used_codes"],
        "perplexity": pruned["perplexity"],
        "codebook_size": len(kept),
        "trained_codebook_size": trained,
    }


