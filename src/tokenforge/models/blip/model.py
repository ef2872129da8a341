"""`BlipModel`: HF BLIP (`self.hf`) with the unit stem; pack, loss, generate, relevance, save/load; and `build_blip`.

The model is `transformers`' `BlipForQuestionAnswering` (`task="vqa"`) or `BlipForConditionalGeneration`
(`task="captioning"`) (the task's `TaskSpec`, `models.blip.settings`), built from a small `BlipConfig` from scratch
(`build_blip`) or loaded from a local checkpoint folder (`BlipModel.from_pretrained`). Only its image input changes:
the vision model's `embeddings` module is replaced by `UnitStem` (`models.blip.stem`, which also describes how
`pack` hands units and positions to it).

Calls. We run the HF submodules ourselves (`vision_model`, `text_encoder`, `text_decoder`) rather than the HF
wrappers' forwards: `BlipForQuestionAnswering.forward` returns only a batch-mean loss (no logits), and its
`generate` gives the answer decoder an all-ones question mask where its forward passes the real one. Here training
and generation use the same masks and the same positions. transformers 5.x loses the cross-attention mask; a hook
hands it over (`models.blip.hf_patch`). The loss is our own per-sample cross-entropy (no label smoothing); HF's
`labels` path is not used. The ids the calls take and return: `models.blip.text` (id conventions).

Relevance per image unit (`relevance`): `tokenforge.continual.blip_relevance`, through the public `pack`,
`text_batch`, `losses`, `key_scale` and `stem.tap`. Storage and pretrained checkpoints: `models.blip.store`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokenforge.errors import TokenforgeError
from tokenforge.models.blip.hf_config import blip_config, seeded, set_ids
from tokenforge.models.blip.hf_patch import mask_cross_attention
from tokenforge.models.blip.settings import BlipSettings, task_spec
from tokenforge.models.blip.stem import UnitStem
from tokenforge.models.blip.store import load_weights, pretrained_parts, read_parts, write_model
from tokenforge.models.blip.text import TextBatch, prompt_rows, text_batch


class BlipModel(nn.Module):
    """HF BLIP (`self.hf`) with the unit stem; loss, generate, relevance, save/load (module doc)."""

    def __init__(self, settings: BlipSettings, hf: nn.Module, stem: UnitStem):
        super().__init__()
        settings.check()
        self.settings = settings
        self.spec = task_spec(settings.task)  # what the task changes, chosen once
        self.hf = hf
        hf.vision_model.embeddings = stem
        set_ids(hf, settings)
        mask_cross_attention(hf)

    # ----------------------------------------------------------------------------------------------- inputs
    @property
    def stem(self) -> UnitStem:
        return self.hf.vision_model.embeddings

    @property
    def device(self) -> torch.device:
        return self.stem.position_embedding.device

    def pack(self, units: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Units (+ positions) -> the one tensor BLIP's vision model takes as `pixel_values` (`models.blip.stem`).

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
            packed = torch.stack([units.to(self.device, torch.long), positions], dim=-1)
        else:
            if units.shape[-1] != s.patch_features:
                raise TokenforgeError(f"blip: patches have {units.shape[-1]} values, the settings say {s.patch_features}")
            packed = torch.cat([units.to(self.device, torch.float32), positions[..., None].float()], dim=-1)
        return packed[:, :0] if s.blind else packed  # blind: no unit reaches the vision model, its class token alone

    def text_batch(self, prompt_ids: torch.Tensor | None, prompt_mask: torch.Tensor | None, target_ids: torch.Tensor,
                   target_mask: torch.Tensor | None, batch: int) -> TextBatch:
        """The encoder / decoder sequences and labels from the caller's ids (`models.blip.text`: id conventions)."""
        s, spec = self.settings, self.spec
        return text_batch(s, spec, self.device, prompt_ids, prompt_mask, target_ids, target_mask, batch)

    # ----------------------------------------------------------------------------------------------- forward
    def _image(self, packed: torch.Tensor) -> torch.Tensor:
        """Image token states (B, 1 + N', width) from the packed units, through BLIP's vision model."""
        return self.hf.vision_model(pixel_values=packed).last_hidden_state

    def _question(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """VQA: the question encoded while cross-attending to the image, (B, Lq, width)."""
        return self.hf.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image,
                                    use_cache=False).last_hidden_state

    def losses(self, packed: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """Per-sample mean cross-entropy over the counted decoder tokens (B,), from packed units and a `TextBatch`."""
        image = self._image(packed)
        if self.spec.question:
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
        """Per-sample mean token cross-entropy of the target (B,) (`models.blip.text`: id conventions)."""
        packed = self.pack(units, positions)
        return self.losses(packed, self.text_batch(prompt_ids, prompt_mask, target_ids, target_mask, packed.shape[0]))

    forward = loss

    @torch.no_grad()
    def generate(self, units: torch.Tensor, positions: torch.Tensor | None, prompt_ids: torch.Tensor | None,
                 prompt_mask: torch.Tensor | None, max_new_tokens: int | None = None) -> torch.Tensor:
        """Greedy target ids (B, L), L <= max_new_tokens, padded with pad_id after each row's end (`models.blip.text`).

        max_new_tokens counts the end token; None: as many as fit in max_text_len after bos (and the prompt)."""
        s = self.settings
        packed = self.pack(units, positions)
        batch = packed.shape[0]
        prompt, plen = prompt_rows(s, self.spec, self.device, prompt_ids, prompt_mask, batch)
        limit = self.hf.config.text_config.max_position_embeddings
        was_training = self.training
        self.eval()
        try:
            image = self._image(packed)
            if self.spec.question:
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
        """A score per image unit (B, N') for how much the target depends on it: `continual.blip_relevance.relevance`
        (gradient, atman, random; `chunk`, `atman_scope`)."""
        # Imported here: continual reads the model through its public methods; the model only hands itself over.
        from tokenforge.continual.blip_relevance import relevance

        return relevance(self, units, positions, prompt_ids, prompt_mask, target_ids, target_mask, method,
                         generator=generator, chunk=chunk, atman_scope=atman_scope)

    @contextmanager
    def key_scale(self, scale: torch.Tensor, cross: bool = True) -> Iterator[None]:
        """Image token j's keys multiplied by scale[:, j] (B, 1 + N') in every attention that attends to image tokens:
        the vision encoder's self-attention (key slice of the fused qkv) and, `cross`, the text model's
        cross-attention to the image (the task's `TaskSpec.image_reader`)."""

        def fused(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            d = output.shape[-1] // 3
            factor = torch.ones((1, 1, 3 * d), dtype=output.dtype, device=output.device).repeat(output.shape[0], output.shape[1], 1)
            factor[..., d : 2 * d] = scale[..., None].to(output.dtype)
            return output * factor

        def keys(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return output * scale[..., None].to(output.dtype)

        hf = self.hf
        text_model = hf.get_submodule(self.spec.image_reader)
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
        """model.safetensors + blip_settings.json + blip_config.json in `folder` (created; `models.blip.store`)."""
        write_model(self, folder)

    @classmethod
    def load(cls, folder: str | Path) -> BlipModel:
        """A model saved by `save`, exactly (never reads the pretrained folder)."""
        model = cls(*read_parts(folder))
        load_weights(model, folder)
        return model

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, settings: BlipSettings, codebook: torch.Tensor | None = None,
                        seed: int = 0) -> BlipModel:
        """A local HF BLIP checkpoint with our stem (`models.blip.store`: Pretrained); new parameters from `seed`."""
        return cls(*pretrained_parts(local_dir, settings, codebook, seed))

    def extra_repr(self) -> str:
        s = self.settings
        return f"task={s.task}, input={s.input}, grid={s.grid}, width={s.width}"


def build_blip(settings: BlipSettings, codebook: torch.Tensor | None, seed: int) -> BlipModel:
    """A BLIP model from the settings: from scratch, or from `settings.pretrained` (a local checkpoint folder).

    Same settings, codebook and seed -> identical weights; the global torch RNG is left as it was."""
    settings = replace(settings, grid=tuple(settings.grid))
    if settings.pretrained:
        return BlipModel.from_pretrained(settings.pretrained, settings, codebook, seed)
    settings.check()
    with seeded(seed):
        hf = task_spec(settings.task).hf_type()(blip_config(settings))
        stem = UnitStem(settings, settings.width, codebook)
        return BlipModel(settings, hf, stem)
