"""BLIP on unit grids: Hugging Face `transformers` BLIP for sequential VQA and captioning on VQ tokens (or pixels).

The model is `transformers`' `BlipForQuestionAnswering` (`task="vqa"`) or `BlipForConditionalGeneration`
(`task="captioning"`), held as `BlipModel.hf`, built from a small `BlipConfig` from scratch (`build_blip`) or loaded
from a local checkpoint folder (`BlipModel.from_pretrained`). Only its image input changes: the vision model's
`embeddings` module (`vision_model.embeddings`) is replaced by `UnitStem`, which reads *units* instead of an image:

- `input="tokens"`: a unit is a code id; it is looked up in a frozen copy of the tokenizer codebook (a buffer,
  standardised per channel as TokenViT's, `models.vit.standardised`), projected by Linear(code_dim, width);
- `input="pixels"`: a unit is one patch of p*p*C pixel values (uint8 0..255, or float on the same scale), channel
  last as `models.vit.patchify` makes them: scaled to [0, 1], normalised per feature ((x - mean) / std, buffers),
  projected by Linear(p*p*C, width);

then plus a learned position embedding at the unit's row-major grid position, after a learned class embedding
(with its own position embedding, index 0): (B, 1 + N', width), for the full grid (N' = h*w) or any subset.

How units and positions reach the stem. BLIP's vision model takes only `pixel_values` and hands it, untouched, to
`self.embeddings(pixel_values, interpolate_pos_encoding=...)` (read in transformers 5.x: neither
`BlipVisionModel.forward` nor its `merge_with_config_defaults` / `capture_outputs` decorators cast or inspect it;
only `BlipVisionEmbeddings.forward`, which we replace, did). So `BlipModel.pack` packs both into one tensor passed
as `pixel_values`: tokens -> (B, N', 2) int64 [id, position]; pixels -> (B, N', F + 1) float32 [features...,
position] (exact: uint8 values and positions < 2**24 are exact in float32). The stem unpacks it. The same packed
tensor works in our calls and in HF's own `hf(...)` / `hf.generate(...)` (tested); no state is set on the stem.

Calls. We run the HF submodules ourselves (`vision_model`, `text_encoder`, `text_decoder`) rather than the HF
wrappers' forwards: `BlipForQuestionAnswering.forward` returns only a batch-mean loss (no logits), and its
`generate` gives the answer decoder an all-ones question mask where its forward passes the real one. Here training
and generation use the same masks and the same positions. transformers 5.x also loses the cross-attention mask inside
`BlipTextAttention` (it passes the mask as `attention_mask`, `BlipTextSelfAttention` reads `encoder_attention_mask`,
None), so padded question tokens were attended to by the answer decoder: a forward pre-hook on each text
cross-attention hands the mask over (`_cross_mask`; a no-op where the mask already arrives). The loss is our own
per-sample cross-entropy (no label smoothing); HF's `labels` path is not used.

Id conventions (the caller's tokenizer gives ids; `pad_id`, `bos_id`, `sep_id` are the settings'):

- `target_ids` (B, T) + `target_mask` (1 = token): the answer (VQA) or the caption (captioning), text tokens only,
  WITHOUT bos and WITHOUT the end token. The model builds the decoder input [bos, (prompt), target, sep] and the loss
  counts the target tokens and the closing `sep_id` (BLIP's generate stops on `text_config.sep_token_id`, so `sep_id`
  is the end token; `eos_id` goes to `text_config.eos_token_id`, which only HF's captioning default prompt uses).
  Per sample: the mean over its len(target) + 1 counted tokens.
- `prompt_ids` (B, P) + `prompt_mask`:
  * VQA: the question, passed to the text encoder (cross-attending to the image) exactly as given, e.g. a BERT
    tokenizer's [CLS] question [SEP] for a pretrained checkpoint, or the bare question ids from scratch; at least
    one token per row. The answer decoder cross-attends to the encoded question, masked by `prompt_mask`.
  * captioning: the decoder prefix WITHOUT bos, e.g. the ids of "a picture of" (no [CLS], no [SEP]); may be empty
    (P = 0, or None). The decoder reads [bos, prompt, caption, sep]; only caption and sep count in the loss.
  Rows may be padded anywhere: each row's tokens are moved to the front in order (right padding) before use.
- `generate` returns (B, L) int64, L <= max_new_tokens: the generated target ids only, no bos, no prompt, the end
  token and everything after it replaced by `pad_id` -- the same convention as `target_ids` (a memorised sample gives
  back exactly its target). Greedy (num_beams=1, do_sample=False), in eval mode, deterministic.
- Lengths: the decoder sequence (1 + prompt + target + 1) and the VQA question must fit in `max_text_len`
  (the text position embeddings of a scratch model); longer inputs raise a TokenforgeError (truncate when tokenising).

Relevance (`relevance`, per image unit, (B, N')), in eval mode, restored after, no gradient left on parameters:

- `gradient`: gradient x input of the per-sample target loss w.r.t. each unit's projected embedding (the stem's
  Linear output, before the position embedding and the class token), |sum over the width|.
- `atman`: AtMan (Deiseroth et al., 2023), faithfully: for each unit i, the pre-softmax attention scores towards
  image token i are multiplied by (1 - 0.9) in every layer, in every head and for every query, and the relevance is
  loss_suppressed - loss_plain. "Every layer" means every attention that attends to image tokens: the vision encoder's
  self-attention and the text model's cross-attention to the image (VQA: the question encoder's; captioning: the
  caption decoder's). The VQA answer decoder attends to question tokens, not image tokens, and is left alone.
  `atman_scope="vision"` suppresses in the vision encoder only (what the reference BLIP AtMan code does).
  Done by forward hooks that scale token i's *keys* (the key slice of BlipAttention's fused `qkv` output; the
  cross-attention `key` Linear's output): score(q, k_i) = q . (f k_i) / sqrt(d) = f * score(q, k_i), exactly the
  multiplied score. The class token is never suppressed. AtMan's optional "conceptual suppression" (also suppressing
  tokens whose embeddings are cosine-similar to token i) is not implemented. The B * N' perturbed copies run in
  chunks of `chunk` rows. As in AtMan, scaling a negative score by 0.1 *raises* that token's attention, so a
  relevance can be negative, and on tiny trained models the one informative unit was not reliably ranked first
  (measured; the gradient scorer ranked it first more often).
- `random`: uniform [0, 1) scores from `generator`.

Storage (`save` / `load`): `model.safetensors` (the whole state dict, codebook and pixel statistics included; tied
weights handled by `safetensors.torch.save_model`), `blip_settings.json` (BlipSettings) and `blip_config.json` (the
HF BlipConfig, so a model from a checkpoint reloads without it). Round trips exactly.

Pretrained (`from_pretrained(local_dir, settings)`): `BlipFor...from_pretrained(local_dir, local_files_only=True)`,
then a new stem: the class embedding is the checkpoint's, the unit position embeddings are the checkpoint's patch
position embeddings resized (bicubic, as HF's `interpolate_pos_encoding`) to the unit grid (copied when the sizes
match); tokens: a fresh Linear(code_dim, width); pixels: when the units are the checkpoint's patches
(patch_features == 3 * patch_size ** 2) the Linear is the patch-embedding convolution's weights reordered to our
channel-last patch layout, with BLIP's image normalisation (CLIP mean / std, per channel); otherwise a fresh Linear
with (x - 0.5) / 0.5. The settings' architecture fields (width, layers, heads, mlp_ratio) are replaced by the
checkpoint's (vision values), the vocabulary size must match, and the settings' ids are written into its text config.

Deviations from HF BLIP: the stem (above); the vision config's `image_size` / `patch_size` of a scratch model are
placeholders (the stem owns the grid); all `initializer_range`s are 0.02 (the vision default, 1e-10, does not train
from scratch); the stem's Linear is initialised as HF initialises Linears (normal 0.02, zero bias); no dropout
(BLIP's defaults).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import standardised

__all__ = ["RELEVANCE_METHODS", "TASKS", "BlipModel", "BlipSettings", "UnitStem", "build_blip"]

TASKS = ("vqa", "captioning")
INPUT_KINDS = ("tokens", "pixels")
RELEVANCE_METHODS = ("gradient", "atman", "random")
ATMAN_SCOPES = ("all", "vision")
ATMAN_SUPPRESSION = 0.9  # AtMan's f: scores towards the suppressed token are multiplied by 1 - f
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # BLIP's image processor normalisation (OpenAI CLIP's)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SETTINGS_FILE = "blip_settings.json"
CONFIG_FILE = "blip_config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class BlipSettings:
    task: str = "vqa"  # vqa | captioning
    input: str = "tokens"  # tokens (code ids) | pixels (uint8 patches)
    width: int = 64  # vision and text hidden size (equal: VQA's decoder cross-attends to the text encoder)
    vision_layers: int = 2
    text_layers: int = 2  # the text encoder's (VQA) and the decoder's
    heads: int = 4
    mlp_ratio: float = 2.0
    vocab_size: int = 0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    sep_id: int = 2  # the end token the decoder learns and generation stops on (may equal eos_id)
    max_text_len: int = 32  # text positions: decoder [bos, prompt, target, sep] and VQA question lengths
    grid: tuple[int, int] = (4, 4)  # unit grid (h, w)
    num_codes: int = 0  # tokens: codebook size
    code_dim: int = 0  # tokens: codebook vector size
    patch_features: int = 0  # pixels: values per unit, p * p * C
    pretrained: str | None = None  # a local HF BLIP checkpoint folder the model started from (build_blip loads it)

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)  # JSON gives a list

    def check(self) -> None:
        """One-line TokenforgeErrors for impossible settings."""
        if self.task not in TASKS:
            raise TokenforgeError(f"blip: unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if self.input not in INPUT_KINDS:
            raise TokenforgeError(f"blip: unknown input {self.input!r}; expected one of {', '.join(INPUT_KINDS)}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise TokenforgeError(f"blip: grid must be [h, w] with h, w >= 1, got {list(self.grid)}")
        if self.width < 1 or self.heads < 1 or self.width % self.heads:
            raise TokenforgeError(f"blip: width {self.width} must be a positive multiple of heads {self.heads}")
        if self.vision_layers < 1 or self.text_layers < 1:
            raise TokenforgeError("blip: vision_layers and text_layers must be >= 1")
        if self.vocab_size < 1:
            raise TokenforgeError(f"blip: vocab_size must be >= 1, got {self.vocab_size}")
        for name in ("pad_id", "bos_id", "eos_id", "sep_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise TokenforgeError(f"blip: {name} {value} is outside the vocabulary 0..{self.vocab_size - 1}")
        if self.max_text_len < 3:
            raise TokenforgeError(f"blip: max_text_len must be >= 3 (bos, a token, sep), got {self.max_text_len}")
        if self.input == "tokens" and (self.num_codes < 1 or self.code_dim < 1):
            raise TokenforgeError("blip: input tokens needs num_codes >= 1 and code_dim >= 1")
        if self.input == "pixels" and self.patch_features < 1:
            raise TokenforgeError("blip: input pixels needs patch_features (p * p * C) >= 1")

    @property
    def units(self) -> int:
        return self.grid[0] * self.grid[1]


class UnitStem(nn.Module):
    """BLIP's vision embeddings for units: (packed units, positions) -> (B, 1 + N', width), class token first.

    Installed as `vision_model.embeddings`; `forward` takes the packed tensor (`BlipModel.pack`) as `pixel_values`."""

    def __init__(self, settings: BlipSettings, width: int, codebook: torch.Tensor | None = None):
        super().__init__()
        self.kind = settings.input
        self.grid = settings.grid
        if self.kind == "tokens":
            if codebook is None or tuple(codebook.shape) != (settings.num_codes, settings.code_dim):
                shape = None if codebook is None else tuple(codebook.shape)
                raise TokenforgeError(
                    f"blip: codebook shape {shape} does not match the settings ({settings.num_codes}, {settings.code_dim})"
                )
            self.register_buffer("codebook", standardised(codebook))
            features = settings.code_dim
        else:
            features = settings.patch_features
            self.register_buffer("pixel_mean", torch.full((features,), 0.5))
            self.register_buffer("pixel_std", torch.full((features,), 0.5))
        self.features = features
        self.proj = nn.Linear(features, width)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, width))
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + settings.units, width))  # class position first
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        nn.init.trunc_normal_(self.class_embedding, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        self.tap: list[torch.Tensor] | None = None  # relevance: unit embeddings of the next forwards, as grad leaves

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed tensor -> (units, positions): ids (B, N) or features (B, N, F) float, positions (B, N) int64."""
        if self.kind == "tokens":
            if packed.is_floating_point() or packed.dim() != 3 or packed.shape[-1] != 2:
                raise TokenforgeError(f"blip stem: expected packed ids (B, N, 2) int64, got {tuple(packed.shape)} {packed.dtype}")
            return packed[..., 0], packed[..., 1]
        if packed.dim() != 3 or packed.shape[-1] != self.features + 1:
            raise TokenforgeError(f"blip stem: expected packed patches (B, N, {self.features + 1}), got {tuple(packed.shape)}")
        return packed[..., :-1], packed[..., -1].round().long()

    def embed(self, units: torch.Tensor) -> torch.Tensor:
        """Units -> projected embeddings (B, N, width), no positions."""
        dtype = self.proj.weight.dtype
        if self.kind == "tokens":
            x = self.codebook[units]
        else:
            x = (units.float() / 255.0 - self.pixel_mean) / self.pixel_std
        return self.proj(x.to(dtype))

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        units, positions = self.unpack(pixel_values)
        emb = self.embed(units)
        if self.tap is not None:  # relevance: a leaf to take gradients w.r.t. (parameters get none)
            emb = emb.detach().requires_grad_(True)
            self.tap.append(emb)
        pos = self.position_embedding[0].to(emb.dtype)
        x = emb + pos[1 + positions]
        cls = (self.class_embedding[0] + pos[:1]).to(emb.dtype).expand(emb.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)


@dataclass
class _Text:
    """Text inputs built from the caller's ids (module doc): encoder (VQA) and decoder sequences, loss labels."""

    enc_ids: torch.Tensor | None  # VQA: (B, Lq) question, valid tokens first
    enc_mask: torch.Tensor | None
    dec_ids: torch.Tensor  # (B, Ld): [bos, (prompt), target, sep, pad...]
    dec_mask: torch.Tensor
    labels: torch.Tensor  # (B, Ld): target and sep where they sit in dec_ids, -100 elsewhere

    def rows(self, index: torch.Tensor) -> _Text:
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, index)

        return _Text(take(self.enc_ids), take(self.enc_mask), take(self.dec_ids), take(self.dec_mask), take(self.labels))


def _valid_first(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's valid ids moved to the front in order (stable), and the per-row counts."""
    valid = mask.bool()
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices
    return ids.gather(1, order), valid.sum(1)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Torch's CPU RNG seeded inside, the caller's global RNG state untouched outside."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _blip_config(settings: BlipSettings) -> Any:
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


def _hf_class(task: str) -> type:
    from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering

    return BlipForQuestionAnswering if task == "vqa" else BlipForConditionalGeneration


def _set_ids(hf: nn.Module, settings: BlipSettings) -> None:
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


def _cross_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook of a BLIP text cross-attention (`crossattention.self`): its key mask, as HF meant it.

    transformers 5.x's `BlipTextAttention` passes the (prepared) encoder mask as `attention_mask`, and
    `BlipTextSelfAttention` then replaces it by its `encoder_attention_mask` argument, never passed (None): padded
    encoder tokens (VQA's question padding) were attended to. Hand the mask over under the name that is read. A no-op
    where the mask already arrives as `encoder_attention_mask` or positionally (other transformers versions)."""
    if kwargs.get("encoder_hidden_states") is None or kwargs.get("encoder_attention_mask") is not None:
        return None
    if kwargs.get("attention_mask") is None:
        return None
    return args, {**kwargs, "encoder_attention_mask": kwargs["attention_mask"]}


def _mask_cross_attention(hf: nn.Module) -> None:
    """`_cross_mask` on every text cross-attention (the VQA question encoder's and the decoder's)."""
    for name, module in hf.named_modules():
        if name.endswith("crossattention.self"):
            module.register_forward_pre_hook(_cross_mask, with_kwargs=True)


class BlipModel(nn.Module):
    """HF BLIP (`self.hf`) with the unit stem; loss, generate, relevance, save/load (module doc)."""

    def __init__(self, settings: BlipSettings, hf: nn.Module, stem: UnitStem):
        super().__init__()
        settings.check()
        self.settings = settings
        self.hf = hf
        hf.vision_model.embeddings = stem
        _set_ids(hf, settings)
        _mask_cross_attention(hf)

    # ----------------------------------------------------------------------------------------------- inputs
    @property
    def stem(self) -> UnitStem:
        return self.hf.vision_model.embeddings

    @property
    def device(self) -> torch.device:
        return self.stem.position_embedding.device

    def pack(self, units: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Units (+ positions) -> the one tensor BLIP's vision model takes as `pixel_values` (module doc).

        tokens: ids (B, N') or a full grid (B, h, w); pixels: patches (B, N', F) or (B, h, w, F). `positions` (B, N')
        row-major grid indices; None: the full grid in order."""
        s = self.settings
        grid_dims = 2 if s.input == "tokens" else 3
        if units.dim() == grid_dims + 1 and positions is None:  # a full grid (B, h, w[, F])
            if tuple(units.shape[1:3]) != s.grid:
                raise TokenforgeError(f"blip: unit grid {tuple(units.shape[1:3])} does not match the settings' grid {s.grid}")
            units = units.flatten(1, 2)
        if units.dim() != grid_dims:
            raise TokenforgeError(f"blip: units must be {'(B, N) ids' if s.input == 'tokens' else '(B, N, F) patches'}, got {tuple(units.shape)}")
        batch, n = units.shape[:2]
        if positions is None:
            if n != s.units:
                raise TokenforgeError(f"blip: {n} units without positions; a full grid has {s.units} (pass positions for subsets)")
            positions = torch.arange(n, device=units.device).expand(batch, -1)
        if positions.is_floating_point() or tuple(positions.shape) != (batch, n):
            raise TokenforgeError(f"blip: positions must be integer (B, N') = {(batch, n)}, got {tuple(positions.shape)} {positions.dtype}")
        if n and (int(positions.min()) < 0 or int(positions.max()) >= s.units):
            raise TokenforgeError(f"blip: positions must lie in 0..{s.units - 1}")
        positions = positions.to(self.device, torch.long)
        if s.input == "tokens":
            if units.is_floating_point():
                raise TokenforgeError(f"blip: input tokens takes integer code ids, got {units.dtype}")
            if n and (int(units.min()) < 0 or int(units.max()) >= s.num_codes):
                raise TokenforgeError(f"blip: code ids must lie in 0..{s.num_codes - 1}")
            return torch.stack([units.to(self.device, torch.long), positions], dim=-1)
        if units.shape[-1] != s.patch_features:
            raise TokenforgeError(f"blip: patches have {units.shape[-1]} values, the settings say {s.patch_features}")
        return torch.cat([units.to(self.device, torch.float32), positions[..., None].float()], dim=-1)

    def _text(self, prompt_ids: torch.Tensor | None, prompt_mask: torch.Tensor | None, target_ids: torch.Tensor,
              target_mask: torch.Tensor | None, batch: int) -> _Text:
        """The encoder / decoder sequences and labels from the caller's ids (module doc: id conventions)."""
        s, device = self.settings, self.device
        prompt, plen = self._prompt(prompt_ids, prompt_mask, batch)
        if target_ids.dim() != 2 or target_ids.shape[0] != batch:
            raise TokenforgeError(f"blip: target_ids must be (B, T) with B = {batch}, got {tuple(target_ids.shape)}")
        target_ids = target_ids.to(device, torch.long)
        target_mask = torch.ones_like(target_ids) if target_mask is None else target_mask.to(device)
        target, tlen = _valid_first(target_ids, target_mask)
        vqa = s.task == "vqa"
        prefix = torch.zeros_like(plen) if vqa else plen  # decoder tokens before the target, after bos
        total = 1 + prefix + tlen + 1
        length = int(total.max())
        if length > s.max_text_len:
            raise TokenforgeError(f"blip: a decoder sequence of {length} tokens (bos, prompt, target, sep) exceeds max_text_len {s.max_text_len}")
        dec = torch.full((batch, length), s.pad_id, dtype=torch.long, device=device)
        labels = torch.full((batch, length), -100, dtype=torch.long, device=device)
        col = torch.arange(length, device=device)[None]
        dec[:, 0] = s.bos_id
        if not vqa and prompt.shape[1]:
            width = min(prompt.shape[1], length - 1)
            keep = col[:, 1 : 1 + width] < (1 + prefix)[:, None]
            dec[:, 1 : 1 + width] = torch.where(keep, prompt[:, :width], dec[:, 1 : 1 + width])
        start = (1 + prefix)[:, None]
        in_target = (col >= start) & (col < start + tlen[:, None])
        if target.shape[1]:
            offset = (col - start).clamp(0, target.shape[1] - 1)
            dec = torch.where(in_target, target.gather(1, offset), dec)
        at_sep = col == start + tlen[:, None]
        dec = torch.where(at_sep, torch.full_like(dec, s.sep_id), dec)
        labels = torch.where(in_target | at_sep, dec, labels)
        dec_mask = (col < total[:, None]).long()
        enc_ids = enc_mask = None
        if vqa:
            enc_ids, enc_mask = prompt, (torch.arange(prompt.shape[1], device=device)[None] < plen[:, None]).long()
        return _Text(enc_ids, enc_mask, dec, dec_mask, labels)

    def _prompt(self, prompt_ids: torch.Tensor | None, prompt_mask: torch.Tensor | None, batch: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt ids with each row's tokens first (trimmed to the longest row) and the per-row lengths."""
        s, device = self.settings, self.device
        if prompt_ids is None:
            prompt_ids = torch.zeros((batch, 0), dtype=torch.long)
        if prompt_ids.dim() != 2 or prompt_ids.shape[0] != batch:
            raise TokenforgeError(f"blip: prompt_ids must be (B, P) with B = {batch}, got {tuple(prompt_ids.shape)}")
        prompt_ids = prompt_ids.to(device, torch.long)
        prompt_mask = torch.ones_like(prompt_ids) if prompt_mask is None else prompt_mask.to(device)
        prompt, plen = _valid_first(prompt_ids, prompt_mask)
        longest = int(plen.max()) if batch else 0
        prompt = prompt[:, :longest]
        if s.task == "vqa":
            if batch and int(plen.min()) < 1:
                raise TokenforgeError("blip: a VQA question (prompt) needs at least one token per row")
            if longest > s.max_text_len:
                raise TokenforgeError(f"blip: a question of {longest} tokens exceeds max_text_len {s.max_text_len}")
        return prompt, plen

    # ----------------------------------------------------------------------------------------------- forward
    def _image(self, packed: torch.Tensor) -> torch.Tensor:
        """Image token states (B, 1 + N', width) from the packed units, through BLIP's vision model."""
        return self.hf.vision_model(pixel_values=packed).last_hidden_state

    def _question(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """VQA: the question encoded while cross-attending to the image, (B, Lq, width)."""
        return self.hf.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image,
                                    use_cache=False).last_hidden_state

    def _losses(self, packed: torch.Tensor, text: _Text) -> torch.Tensor:
        """Per-sample mean cross-entropy over the counted decoder tokens (B,)."""
        image = self._image(packed)
        if self.settings.task == "vqa":
            memory, memory_mask = self._question(image, text.enc_ids, text.enc_mask), text.enc_mask
        else:
            memory, memory_mask = image, None
        logits = self.hf.text_decoder(input_ids=text.dec_ids, attention_mask=text.dec_mask,
                                      encoder_hidden_states=memory, encoder_attention_mask=memory_mask,
                                      use_cache=False).logits
        labels = text.labels[:, 1:]
        ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counted = (labels != -100).sum(1).clamp_min(1)
        return ce.sum(1) / counted

    def loss(self, units: torch.Tensor, positions: torch.Tensor | None, prompt_ids: torch.Tensor | None,
             prompt_mask: torch.Tensor | None, target_ids: torch.Tensor, target_mask: torch.Tensor | None
             ) -> torch.Tensor:
        """Per-sample mean token cross-entropy of the target (B,) (module doc: id conventions)."""
        packed = self.pack(units, positions)
        return self._losses(packed, self._text(prompt_ids, prompt_mask, target_ids, target_mask, packed.shape[0]))

    forward = loss

    @torch.no_grad()
    def generate(self, units: torch.Tensor, positions: torch.Tensor | None, prompt_ids: torch.Tensor | None,
                 prompt_mask: torch.Tensor | None, max_new_tokens: int | None = None) -> torch.Tensor:
        """Greedy target ids (B, L), L <= max_new_tokens, padded with pad_id after each row's end (module doc).

        max_new_tokens counts the end token; None: as many as fit in max_text_len after bos (and the prompt)."""
        s = self.settings
        packed = self.pack(units, positions)
        batch = packed.shape[0]
        prompt, plen = self._prompt(prompt_ids, prompt_mask, batch)
        limit = self.hf.config.text_config.max_position_embeddings
        was_training = self.training
        self.eval()
        try:
            image = self._image(packed)
            if s.task == "vqa":
                enc_mask = (torch.arange(prompt.shape[1], device=self.device)[None] < plen[:, None]).long()
                question = self._question(image, prompt, enc_mask)
                groups = [(torch.arange(batch, device=self.device), 0, question, enc_mask)]
            else:  # one generate per prompt length: no padding inside a decoder sequence, positions as in training
                groups = []
                for p in sorted(set(plen.tolist())):
                    rows = (plen == p).nonzero().flatten()
                    groups.append((rows, p, image.index_select(0, rows), None))
            outputs = [None] * len(groups)
            for g, (rows, p, memory, memory_mask) in enumerate(groups):
                steps = max_new_tokens if max_new_tokens is not None else min(s.max_text_len, limit) - 1 - p
                if steps < 1 or 1 + p + steps > limit:
                    raise TokenforgeError(f"blip: {steps} new tokens after {1 + p} prefix tokens do not fit the {limit} text positions")
                start = torch.full((len(rows), 1), s.bos_id, dtype=torch.long, device=self.device)
                ids = torch.cat([start, prompt.index_select(0, rows)[:, :p]], dim=1)
                kwargs = {} if memory_mask is None else {"encoder_attention_mask": memory_mask}
                out = self.hf.text_decoder.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=memory,
                    max_new_tokens=steps, do_sample=False, num_beams=1, bos_token_id=s.bos_id,
                    eos_token_id=s.sep_id, pad_token_id=s.pad_id, **kwargs)
                outputs[g] = (rows, out[:, 1 + p :])
        finally:
            self.train(was_training)
        width = max(out.shape[1] for _, out in outputs)
        result = torch.full((batch, width), s.pad_id, dtype=torch.long, device=self.device)
        for rows, out in outputs:
            result[rows, : out.shape[1]] = out
        ended = (result == s.sep_id).long().cumsum(1) > 0  # the end token and everything after it
        result = result.masked_fill(ended, s.pad_id)
        length = int((~ended).sum(1).max()) if batch else 0
        return result[:, :length]

    # ----------------------------------------------------------------------------------------------- relevance
    def relevance(self, units: torch.Tensor, positions: torch.Tensor | None, prompt_ids: torch.Tensor | None,
                  prompt_mask: torch.Tensor | None, target_ids: torch.Tensor, target_mask: torch.Tensor | None,
                  method: str, generator: torch.Generator | None = None, chunk: int = 64,
                  atman_scope: str = "all") -> torch.Tensor:
        """A score per image unit (B, N') for how much the target depends on it (module doc: gradient, atman,
        random). Eval mode inside, the mode restored after; no gradient is left on parameters.

        `chunk`: perturbed copies per forward (atman); `atman_scope`: "all" (the vision self-attention and the text
        cross-attention to the image) or "vision" (the vision encoder only, as the reference BLIP AtMan code)."""
        if method not in RELEVANCE_METHODS:
            raise TokenforgeError(f"blip: unknown relevance method {method!r}; expected one of {', '.join(RELEVANCE_METHODS)}")
        if atman_scope not in ATMAN_SCOPES:
            raise TokenforgeError(f"blip: unknown atman_scope {atman_scope!r}; expected one of {', '.join(ATMAN_SCOPES)}")
        packed = self.pack(units, positions)
        batch, n = packed.shape[:2]
        if method == "random":
            return torch.rand((batch, n), generator=generator, device=generator.device if generator else "cpu").to(self.device)
        text = self._text(prompt_ids, prompt_mask, target_ids, target_mask, batch)
        was_training = self.training
        self.eval()
        try:
            if method == "gradient":
                return self._gradient(packed, text)
            return self._atman(packed, text, max(1, int(chunk)), atman_scope == "all")
        finally:
            self.train(was_training)

    def _gradient(self, packed: torch.Tensor, text: _Text) -> torch.Tensor:
        stem = self.stem
        taps: list[torch.Tensor] = []
        stem.tap = taps
        try:
            with torch.enable_grad():
                losses = self._losses(packed, text)
                (grad,) = torch.autograd.grad(losses.sum(), taps[0])
        finally:
            stem.tap = None
        return (grad * taps[0].detach()).sum(-1).abs().float()

    @torch.no_grad()
    def _atman(self, packed: torch.Tensor, text: _Text, chunk: int, cross: bool) -> torch.Tensor:
        batch, n = packed.shape[:2]
        plain = self._losses(packed, text)
        rows = torch.arange(batch * n, device=self.device)
        scores = torch.empty(batch * n, device=self.device)
        for begin in range(0, batch * n, chunk):
            r = rows[begin : begin + chunk]
            sample, unit = r // n, r % n
            scale = torch.ones((len(r), 1 + n), device=self.device)
            scale[torch.arange(len(r), device=self.device), 1 + unit] = 1.0 - ATMAN_SUPPRESSION
            with self._key_scale(scale, cross):
                losses = self._losses(packed.index_select(0, sample), text.rows(sample))
            scores[begin : begin + chunk] = losses - plain[sample]
        return scores.view(batch, n)

    @contextmanager
    def _key_scale(self, scale: torch.Tensor, cross: bool = True) -> Iterator[None]:
        """Image token j's keys multiplied by scale[:, j] (B, 1 + N') in every attention that attends to image tokens:
        the vision encoder's self-attention (key slice of the fused qkv) and, `cross`, the text model's
        cross-attention to the image."""

        def fused(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            d = output.shape[-1] // 3
            factor = torch.ones((1, 1, 3 * d), dtype=output.dtype, device=output.device).repeat(output.shape[0], output.shape[1], 1)
            factor[..., d : 2 * d] = scale[..., None].to(output.dtype)
            return output * factor

        def keys(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return output * scale[..., None].to(output.dtype)

        hf = self.hf
        text_model = hf.text_encoder if self.settings.task == "vqa" else hf.text_decoder.bert
        handles = [layer.self_attn.qkv.register_forward_hook(fused) for layer in hf.vision_model.encoder.layers]
        if cross:
            handles += [layer.crossattention.self.key.register_forward_hook(keys) for layer in text_model.encoder.layer]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ----------------------------------------------------------------------------------------------- storage
    def save(self, folder: str | Path) -> None:
        """model.safetensors + blip_settings.json + blip_config.json in `folder` (created)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # Tied tensors (the decoder's output layer is its word embeddings) are stored once, under the first of their
        # names in sorted order, as safetensors' save_model does (load_model finds the ties on the model itself).
        # Without save_model's metadata {dropped: kept}: safetensors writes metadata from a hash map, in an order
        # that changes from save to save, so equal models gave different bytes about every second time.
        state = self.state_dict()
        groups: dict[tuple, list[str]] = {}
        for name, tensor in state.items():
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
            groups.setdefault(key, []).append(name)
        dropped = {name: sorted(names)[0] for names in groups.values() for name in sorted(names)[1:]}
        tensors = {name: t.contiguous() for name, t in state.items() if name not in dropped}
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / SETTINGS_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")
        (folder / CONFIG_FILE).write_text(json.dumps(self.hf.config.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> BlipModel:
        """A model saved by `save`, exactly (never reads the pretrained folder)."""
        from safetensors.torch import load_model
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
        with _seeded(0):  # every value is overwritten by the saved weights
            hf = _hf_class(settings.task)(config)
            model = cls(settings, hf, UnitStem(settings, config.vision_config.hidden_size, codebook))
        missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=False)
        if missing or unexpected:
            raise TokenforgeError(f"blip: {folder / WEIGHTS_FILE} does not fit the model (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        return model

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, settings: BlipSettings, codebook: torch.Tensor | None = None,
                        seed: int = 0) -> BlipModel:
        """A local HF BLIP checkpoint with our stem (module doc: Pretrained); new parameters from `seed`."""
        path = Path(local_dir)
        if not path.is_dir():
            raise TokenforgeError(f"blip: pretrained folder {path} not found")
        settings = replace(settings, grid=tuple(settings.grid))
        if settings.task not in TASKS:
            raise TokenforgeError(f"blip: unknown task {settings.task!r}; expected one of {', '.join(TASKS)}")
        with _seeded(seed):
            try:
                hf = _hf_class(settings.task).from_pretrained(str(path), local_files_only=True)
            except (OSError, ValueError) as error:
                raise TokenforgeError(f"blip: cannot load a BLIP checkpoint from {path}: {str(error).splitlines()[0]}") from None
            vision, text = hf.config.vision_config, hf.config.text_config
            if settings.task == "vqa" and vision.hidden_size != text.hidden_size:
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
            _init_stem_from(stem, old, settings)
        return cls(settings, hf, stem)

    def extra_repr(self) -> str:
        s = self.settings
        return f"task={s.task}, input={s.input}, grid={s.grid}, width={s.width}"


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


@torch.no_grad()
def _init_stem_from(stem: UnitStem, old: nn.Module, settings: BlipSettings) -> None:
    """The stem's class and position embeddings (and, pixels with the checkpoint's patch size, its Linear and the
    normalisation) from a checkpoint's BlipVisionEmbeddings."""
    stem.class_embedding.copy_(old.class_embedding)
    table = old.position_embedding  # (1, 1 + g*g, D), class position first
    patches = table.shape[1] - 1
    side = math.isqrt(patches)
    grid = table[0, 1:].reshape(side, side, -1) if side * side == patches else None
    h, w = settings.grid
    if grid is not None:
        if (side, side) != (h, w):
            grid = F.interpolate(grid.permute(2, 0, 1)[None].float(), size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
        stem.position_embedding[0, 0].copy_(table[0, 0])
        stem.position_embedding[0, 1:].copy_(grid.reshape(h * w, -1))
    conv = old.patch_embedding  # Conv2d(3, D, p, stride p)
    p = _pair(conv.kernel_size)
    if settings.input == "pixels" and conv.in_channels == 3 and settings.patch_features == 3 * p[0] * p[1]:
        stem.proj.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1))  # (p, p, C) order
        stem.proj.bias.copy_(conv.bias)
        channel = torch.arange(settings.patch_features) % 3
        stem.pixel_mean.copy_(torch.tensor(CLIP_MEAN)[channel])
        stem.pixel_std.copy_(torch.tensor(CLIP_STD)[channel])


def build_blip(settings: BlipSettings, codebook: torch.Tensor | None, seed: int) -> BlipModel:
    """A BLIP model from the settings: from scratch, or from `settings.pretrained` (a local checkpoint folder).

    Same settings, codebook and seed -> identical weights; the global torch RNG is left as it was."""
    settings = replace(settings, grid=tuple(settings.grid))
    if settings.pretrained:
        return BlipModel.from_pretrained(settings.pretrained, settings, codebook, seed)
    settings.check()
    with _seeded(seed):
        hf = _hf_class(settings.task)(_blip_config(settings))
        stem = UnitStem(settings, settings.width, codebook)
        return BlipModel(settings, hf, stem)
