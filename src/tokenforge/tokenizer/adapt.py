"""TokenAdapt (SeiT++, naver-ai/tokenadapt): a pair of small networks that let pixel-style spatial augmentations act
on token grids.

  f: ids (B, h, w) -> raw codebook vectors (B, D, h, w) -> Linear(D -> W) + fixed 2-D sin-cos positions
     -> one pre-LN transformer block (timm's Block, MLP with Tanh) -> LayerNorm -> ConvTranspose2d(W -> D, k2 s2):
     a (B, D, 2h, 2w) map on which flips, affine transforms and resized crops are valid;
  g: (B, D, 2h, 2w) -> Conv2d(D -> W, k2 s2) + the same positions -> one block -> LayerNorm -> Linear(W -> K):
     logits (B, K, h, w) over the K codes; its argmax is a grid of ids again.

f looks up the tokenizer's raw codebook (`VQTokenizer.codebook`, the kept vectors as encode compares them), not
the standardised copy a TokenViT holds; the adapter keeps it as its `codebook` buffer, so it is self-contained and
an adapter made for another codebook is recognised (`check_codebook`).

Training (`train_adapter`, the `tokenadapt` stage): cross-entropy between g(A(f(Tok(I)))) and Tok(A(I)), where A
is the same spatial transform applied to the pixels and to f's map in relative coordinates (`SpatialParams`,
`apply_spatial`), and Tok the VQ encoder. Once trained the pair is frozen; `TokenAugmenter` runs it on half of
each batch (augment.tokenadapt_p).

An adapter directory holds adapter.safetensors (the weights and the raw codebook) and config.json (sizes, the
tokenizer's codebook digest and shape, training settings and statistics).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from tokenforge.data.draws import chosen, crop_boxes, uniform
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json, require_file, write_json

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "config.json"

# The spatial augmentations of the official code (SeiT++ TokenAdapt): flip p 0.5; with p 0.5 a chain of rotation,
# translation and shear, each p 0.5; then a random resized crop.
FLIP_P = 0.5
CHAIN_P = 0.5
STEP_P = 0.5
DEGREES = 30.0  # rotation uniform in [-30, 30] degrees
TRANSLATE = 0.2  # translation uniform in [-0.2, 0.2] of the width / height
SHEAR = 15.0  # x-shear uniform in [-15, 15] degrees (torchvision RandomAffine(shear=15))
CROP_SCALE = (0.08, 1.0)  # area of the random resized crop


# ----------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class AdapterConfig:
    """The adapter's shape; grid and codebook are the tokenizer's."""

    codebook_size: int
    code_dim: int
    grid: tuple[int, int]
    width: int = 128
    heads: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(s) for s in self.grid))
        if self.width < 4 or self.width % 4:
            raise TokenforgeError(f"--width {self.width}: must be a multiple of 4 (2-D sin-cos positions)")
        if self.heads < 1 or self.width % self.heads:
            raise TokenforgeError(f"--heads {self.heads}: must divide --width {self.width}")
        if self.mlp_ratio <= 0:
            raise TokenforgeError(f"--mlp-ratio {self.mlp_ratio}: must be positive")


def sincos_positions(width: int, height: int, cols: int) -> Tensor:
    """(height * cols, width) fixed 2-D sin-cos positions (MAE's get_2d_sincos_pos_embed): half the channels encode
    the row, half the column, each as sin and cos of geometrically spaced frequencies."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, columns = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (columns.flatten(), rows.flatten()):  # MAE: width (x) first, then height (y)
        angle = coord[:, None] * omega[None, :]
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, dim=1).float()


def _block(config: AdapterConfig) -> Block:
    return Block(config.width, config.heads, config.mlp_ratio, qkv_bias=True, act_layer=nn.Tanh)


class TokenAdapter(nn.Module):
    """f (ids -> (B, D, 2h, 2w) map) and g (map -> (B, K, h, w) logits); `codebook` (K, D) is the raw codebook."""

    def __init__(self, config: AdapterConfig, codebook: Tensor):
        super().__init__()
        want = (config.codebook_size, config.code_dim)
        if codebook.ndim != 2 or tuple(codebook.shape) != want:
            raise TokenforgeError(f"adapter: codebook of shape {tuple(codebook.shape)}, the config says {want}")
        self.config = config
        width, dim = config.width, config.code_dim
        self.register_buffer("codebook", codebook.detach().float().clone())
        self.register_buffer("pos", sincos_positions(width, *config.grid)[None], persistent=False)
        self.f_proj = nn.Linear(dim, width)
        self.f_block = _block(config)
        self.f_norm = nn.LayerNorm(width)
        self.f_up = nn.ConvTranspose2d(width, dim, kernel_size=2, stride=2)
        self.g_down = nn.Conv2d(dim, width, kernel_size=2, stride=2)
        self.g_block = _block(config)
        self.g_norm = nn.LayerNorm(width)
        self.g_head = nn.Linear(width, config.codebook_size)

    def f(self, ids: Tensor) -> Tensor:
        """(B, h, w) code ids -> (B, D, 2h, 2w) float map."""
        h, w = self.config.grid
        if ids.ndim != 3 or tuple(ids.shape[1:]) != (h, w):
            raise TokenforgeError(f"adapter: expects (batch, {h}, {w}) id grids, got {tuple(ids.shape)}")
        x = self.f_proj(self.codebook[ids.long()].flatten(1, 2)) + self.pos  # (B, h*w, W)
        x = self.f_norm(self.f_block(x))
        return self.f_up(x.transpose(1, 2).reshape(len(x), -1, h, w))

    def g(self, maps: Tensor) -> Tensor:
        """(B, D, 2h, 2w) map -> (B, K, h, w) logits over the codes."""
        h, w = self.config.grid
        if maps.ndim != 4 or tuple(maps.shape[1:]) != (self.config.code_dim, 2 * h, 2 * w):
            raise TokenforgeError(f"adapter: expects ({self.config.code_dim}, {2 * h}, {2 * w}) maps, got {tuple(maps.shape)}")
        x = self.g_down(maps).flatten(2).transpose(1, 2) + self.pos
        x = self.g_head(self.g_norm(self.g_block(x)))  # (B, h*w, K)
        return x.transpose(1, 2).reshape(len(x), -1, h, w)

    def forward(self, ids: Tensor) -> Tensor:
        """g(f(ids)): logits of the identity reconstruction."""
        return self.g(self.f(ids))


def codebook_digest(codebook: Tensor) -> str:
    """sha256 of the (K, D) float32 codebook's bytes: which codebook an adapter was made for."""
    return hashlib.sha256(codebook.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def check_codebook(adapter: TokenAdapter, codebook: Tensor, where: str) -> None:
    """The adapter must be made for `codebook`: the tokenizer's raw one, or a TokenViT's standardised copy of it."""
    from tokenforge.models.vit import standardised

    mine = adapter.codebook.to(codebook.device)
    if tuple(mine.shape) == tuple(codebook.shape):
        raw = torch.equal(mine, codebook.float())
        if raw or torch.allclose(standardised(mine), standardised(codebook), atol=1e-4):
            return
    raise TokenforgeError(
        f"{where}: an adapter made for another codebook ({tuple(mine.shape)} codes x dims, "
        f"sha256 {codebook_digest(mine)[:12]}) than this model's ({tuple(codebook.shape)})"
    )


def save_adapter(adapter: TokenAdapter, out_dir: Path, info: dict[str, Any]) -> None:
    """adapter.safetensors and config.json (the sizes, the codebook's digest, and `info`) into `out_dir`."""
    state = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    meta = {**asdict(adapter.config), "grid": list(adapter.config.grid), "codebook_sha256": codebook_digest(adapter.codebook)}
    write_json(out_dir / CONFIG_FILE, {**meta, **info})


def load_adapter(path: str | Path) -> TokenAdapter:
    """The frozen adapter in directory `path` (eval mode, no gradients); reads only safetensors."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    raw = read_json(config_path)
    keys = ("codebook_size", "code_dim", "grid", "width", "heads", "mlp_ratio")
    missing = [k for k in keys if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise TokenforgeError(f"{config_path}: missing key(s) {', '.join(missing)} (not a `tokenforge tokenadapt` output?)")
    weights = require_file(path / WEIGHTS_FILE, "adapter weights")
    try:
        state = load_file(str(weights))
        config = AdapterConfig(**{k: raw[k] for k in keys})
        adapter = TokenAdapter(config, state["codebook"])
        adapter.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise TokenforgeError(f"{weights}: weights do not match {config_path.name} ({reason})") from None
    if raw.get("codebook_sha256") not in (None, codebook_digest(adapter.codebook)):
        raise TokenforgeError(f"{weights}: its codebook is not the one {config_path.name} names (codebook_sha256)")
    adapter.requires_grad_(False)
    return adapter.eval()


# ------------------------------------------------------------------------------- spatial transforms


@dataclass
class SpatialParams:
    """Per-sample spatial transforms in relative coordinates, the same for pixels and maps.

    flip (n,) bool; angle, shear (n,) degrees; translate (n, 2) fractions of (width, height); box (n, 4) int
    (top, left, height, width) of the crop on a `lattice` (rows, cols) grid, the coarsest grid both the pixels and
    the maps are whole multiples of, so a crop cuts both at the same place."""

    flip: Tensor
    angle: Tensor
    translate: Tensor
    shear: Tensor
    box: Tensor
    lattice: tuple[int, int]

    def __len__(self) -> int:
        return len(self.flip)


def lattice_of(grid: tuple[int, int], downsample: int) -> tuple[int, int]:
    """The crop lattice: f's map has 2 cells per token side, the image `downsample` pixels; the coarser of the two."""
    per_token = min(2, int(downsample))
    return grid[0] * per_token, grid[1] * per_token


def draw_spatial(n: int, lattice: tuple[int, int], generator: torch.Generator, identity_p: float = 0.0) -> SpatialParams:
    """n draws of the official spatial augmentations; with prob. identity_p a sample gets none (not even the crop).

    Always draws the same numbers in the same order, so the generator's state after it depends on n only."""
    flip = chosen(n, FLIP_P, generator)
    chain = chosen(n, CHAIN_P, generator)
    rotate, shift, shear_on = (chosen(n, STEP_P, generator) & chain for _ in range(3))
    angle = uniform(-DEGREES, DEGREES, n, generator) * rotate
    translate = torch.stack([uniform(-TRANSLATE, TRANSLATE, n, generator) for _ in range(2)], dim=1) * shift[:, None]
    shear = uniform(-SHEAR, SHEAR, n, generator) * shear_on
    boxes = crop_boxes(n, CROP_SCALE, generator)  # fractions (top, left, height, width)
    identity = chosen(n, identity_p, generator)
    rows, cols = lattice
    size = torch.tensor([rows, cols, rows, cols], dtype=torch.float64, device=boxes.device)
    box = quantised_boxes(boxes * size, rows, cols)
    box[identity] = torch.tensor([0, 0, rows, cols], device=box.device)
    keep = ~identity
    return SpatialParams(flip & keep, angle * keep, translate * keep[:, None], shear * keep, box, (rows, cols))


def quantised_boxes(boxes: Tensor, rows: int, cols: int) -> Tensor:
    """(n, 4) float (top, left, height, width) in lattice cells -> whole cells, at least 1, inside the grid."""
    height = boxes[:, 2].round().clamp(1, rows)
    width = boxes[:, 3].round().clamp(1, cols)
    top = torch.minimum(boxes[:, 0].round(), rows - height).clamp(min=0)
    left = torch.minimum(boxes[:, 1].round(), cols - width).clamp(min=0)
    return torch.stack([top, left, height, width], dim=1).long()


def apply_spatial(x: Tensor, params: SpatialParams, nearest: bool = False, fill: float = 0.0) -> Tensor:
    """Each sample of (n, C, H, W) `x` through its flip -> affine (rotation, translation, shear) -> resized crop.

    One sample at a time: torchvision's ops on a 4-D tensor would give the whole batch one transform. H and W must be
    whole multiples of the lattice. Bilinear (differentiable) unless `nearest`; uncovered areas get `fill`."""
    n, _, height, width = x.shape
    rows, cols = params.lattice
    if len(params) != n or height % rows or width % cols:
        raise TokenforgeError(f"spatial: {len(params)} transforms on a lattice {params.lattice} for {tuple(x.shape)}")
    mode = InterpolationMode.NEAREST if nearest else InterpolationMode.BILINEAR
    scale = torch.tensor([height // rows, width // cols] * 2)
    flips, angles, shears = params.flip.tolist(), params.angle.tolist(), params.shear.tolist()
    shifts, boxes = params.translate.tolist(), (params.box.cpu() * scale).tolist()
    out = []
    for i in range(n):
        xi = x[i : i + 1]
        if flips[i]:
            xi = TF.horizontal_flip(xi)
        if angles[i] or shears[i] or any(shifts[i]):
            move = [shifts[i][0] * width, shifts[i][1] * height]
            # fill None is grid_sample's zero padding; torchvision's own fill works in place, which autograd refuses
            xi = TF.affine(xi, angle=angles[i], translate=move, scale=1.0, shear=[shears[i], 0.0], interpolation=mode,
                           fill=[fill] if fill else None)
        top, left, box_h, box_w = boxes[i]
        if (box_h, box_w) != (height, width):
            xi = TF.resized_crop(xi, top, left, box_h, box_w, [height, width], interpolation=mode, antialias=False)
        out.append(xi)
    return torch.cat(out) if out else x


def transform_pixels(images: np.ndarray | Tensor, params: SpatialParams) -> Tensor:
    """uint8 NHWC images through their transforms (bilinear, black fill) -> uint8 NHWC, for the VQ encoder."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    return apply_spatial(x, params).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def transform_ids_nearest(ids: Tensor, params: SpatialParams, fill: int) -> Tensor:
    """The trivial baseline: the transforms applied to the id grid itself by nearest neighbour, at f's map size
    (each token 2x2 cells), read back at each token's top-left cell; uncovered areas get the code `fill`."""
    cells = ids.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[:, None].double()
    moved = apply_spatial(cells, params, nearest=True, fill=float(fill))
    return moved[:, 0, ::2, ::2].round().long()


def mean_or_nan(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan
