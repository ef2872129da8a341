"""Token attribution scorers: which grid tokens of a sample matter most for its own label.

The replay memory keeps only each sample's most relevant tokens ("core tokensets", Paul et al. 2024), so
it needs a relevance score per grid token. Every scorer returns the class token's row over the grid
tokens (the prefix column dropped), higher = more relevant:
- rollout: attention rollout (Abnar & Zuidema 2020), label-independent;
- chefer: gradient-weighted attention relevance (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability");
- gradcam: attention GradCAM on the last block (one of Chefer et al.'s baselines);
- atman: attention-suppression perturbation (AtMan, Deiseroth et al. 2023): the loss increase when a token is hidden;
- random: uniform noise, the control.
For BLIP (vqa, captioning) atman, random and gradient (x input) score the image units for an item's text target
(continual/blip_relevance.py).

A scorer of your own (`memory.scorer: "mylab.saliency:score"`, or an entry point in `tokenforge.scorers`) is a
function called once per batch of the samples a memory may keep, in eval mode, on the model's device:

    def score(model, units, targets, *, generator) -> torch.Tensor:   # (B, h*w), higher = more relevant
        ...
    score.families = ("classification",)   # optional; the families it can score (classification by default)

`units` are code ids (B, h, w) or pixel patches (B, h, w, F), `targets` the samples' labels (B,) for classification
(for vqa and captioning the text tuple (prompt_ids, prompt_mask, target_ids, target_mask)), `generator` a CPU
torch.Generator seeded once per memory build. The example plugin package in examples/ has one (gradient x input on
the ViT). A scorer may set `whole_set = True` to be called once with every sample instead of per batch.

Everything goes through the model's probe API (`TokenViT.probe`, documented in `models.vit`): attention
probabilities are recorded in the autograd graph (computed as timm's unfused attention), and gradients are
taken with `torch.autograd.grad` w.r.t. those maps only, so no parameter ever gets a `.grad`. AtMan scales keys
through the probe instead, which keeps the fused attention. The probe is undone when its context exits, and
the model's train/eval mode is restored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from tokenforge.continual import SCORERS
from tokenforge.continual.methods import ALL_FAMILIES
from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import device_of

_ATMAN_TOKENS = 12288  # tokens per AtMan forward: small forwards stay in cache (measured fastest on CPU) and bound memory


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Eval mode (no dropout, so scores are deterministic) for the duration; the previous mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _embedded(model, units: torch.Tensor) -> torch.Tensor:
    """Units -> the embedded map (B, D, h, w) that `model(...)` accepts as a float input."""
    return model.embed(units).permute(0, 3, 1, 2)


def _attention_forward(model, emb: torch.Tensor, blocks: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the attention probabilities (B, heads, N, N) of the given blocks, in the autograd graph."""
    with model.probe(attention=blocks) as probe:
        logits = model(emb)
    return logits, probe.maps


def _rollout(model, units: torch.Tensor) -> torch.Tensor:
    """Attention rollout: head-mean attention + identity, row-normalised, multiplied across blocks; the CLS row."""
    with torch.no_grad():
        _, maps = _attention_forward(model, _embedded(model, units), list(range(len(model.vit.blocks))))
    n = maps[0].shape[-1]
    eye = torch.eye(n, device=maps[0].device)
    rollout = eye.expand(maps[0].shape[0], n, n)
    for attn in maps:
        a = attn.mean(dim=1) + eye  # the residual path
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    return rollout[:, 0, model.vit.num_prefix_tokens :]


def _target_gradients(model, units: torch.Tensor, labels: torch.Tensor, blocks: list[int]):
    """Attention maps of `blocks` and the gradients of each sample's label logit w.r.t. them (parameters untouched)."""
    with torch.enable_grad():
        # Gradients flow from a leaf input, so they exist even when every parameter is frozen.
        emb = _embedded(model, units).detach().requires_grad_(True)
        logits, maps = _attention_forward(model, emb, blocks)
        # Samples are independent (eval mode, per-token norms), so one backward of the sum gives every sample's gradients.
        target = logits.gather(1, labels[:, None]).sum()
        grads = torch.autograd.grad(target, maps)
    return [m.detach() for m in maps], [g.detach() for g in grads]


def _chefer(model, units: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """R = I; per block in order R = R + mean_heads(clamp(grad_A * A, min=0)) @ R; the CLS row."""
    maps, grads = _target_gradients(model, units, labels, list(range(len(model.vit.blocks))))
    n = maps[0].shape[-1]
    relevance = torch.eye(n, device=maps[0].device).expand(maps[0].shape[0], n, n)
    for attn, grad in zip(maps, grads):
        weighted = (grad * attn).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    return relevance[:, 0, model.vit.num_prefix_tokens :]


def _gradcam(model, units: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Last block: per-head weights = mean gradient over queries and keys; clamp(mean_heads(weights * A), min=0); the CLS row."""
    (attn,), (grad,) = _target_gradients(model, units, labels, [len(model.vit.blocks) - 1])
    weights = grad.mean(dim=(-2, -1), keepdim=True)
    cam = (weights * attn).mean(dim=1).clamp(min=0)
    return cam[:, 0, model.vit.num_prefix_tokens :]


def _atman_factors(model, units: torch.Tensor, suppression: float, conceptual: float | None) -> torch.Tensor:
    """Key multipliers (B, n, prefix + n): row j suppresses grid token j (and its look-alikes when `conceptual` is set)."""
    b = units.shape[0]
    prefix = model.vit.num_prefix_tokens
    n = units.shape[1] * units.shape[2]
    eye = torch.eye(n, device=units.device)
    if conceptual is None:
        grid = (1.0 - suppression * eye).expand(b, n, n)
    else:
        # AtMan's correlated suppression: tokens whose input embeddings (the ViT's patch embeddings, no positions)
        # are closer than the threshold in cosine similarity to token j are suppressed too, in proportion to it.
        with torch.no_grad():
            emb = F.normalize(model.project(model.embed(units).flatten(1, 2)), dim=-1)
            sim = (emb @ emb.transpose(1, 2)).clamp(0, 1)
        sim = torch.where(sim > conceptual, sim, torch.zeros((), device=sim.device))
        sim = torch.maximum(sim, eye)  # token j itself is always fully suppressed
        grid = 1.0 - suppression * sim
    return torch.cat([torch.ones(b, n, prefix, device=grid.device), grid], dim=2)


def _atman(model, units: torch.Tensor, labels: torch.Tensor, suppression: float, conceptual: float | None) -> torch.Tensor:
    """Score_j = CE(label | token j's attention column suppressed in every block) - CE(label | nothing suppressed).

    Each sample's n perturbed copies run batched, whole samples per forward, about _ATMAN_TOKENS tokens each.
    The logits read only the class token, so the last block computes only the prefix tokens' outputs
    through the probe's `prefix_only` (exact; measured on one CPU thread, depth 4, width 64, 4x4 grid, 200
    samples: median ~285 ms with it, ~355 ms without, about a fifth less)."""
    b = units.shape[0]
    n = units.shape[1] * units.shape[2]
    per_chunk = max(1, _ATMAN_TOKENS // (n * (n + model.vit.num_prefix_tokens)))
    with torch.no_grad():
        emb = _embedded(model, units)
        factors = _atman_factors(model, units, suppression, conceptual)  # (b, n, prefix + n)
        with model.probe(prefix_only=True):
            base = F.cross_entropy(model(emb), labels, reduction="none")  # (b,): same path, so no suppression scores 0
        losses = []
        for i in range(0, b, per_chunk):
            part = emb[i : i + per_chunk]
            scale = factors[i : i + per_chunk].flatten(0, 1)  # sample s, token j -> row s * n + j
            with model.probe(key_scale=scale, prefix_only=True):
                logits = model(part.repeat_interleave(n, dim=0))
            losses.append(F.cross_entropy(logits, labels[i : i + per_chunk].repeat_interleave(n), reduction="none"))
    return torch.cat(losses).reshape(b, n) - base[:, None]


class Scorer:
    """A built-in scorer: one implementation per task family it can score (`families`)."""

    def __init__(self, whole_set: bool = False, batch_size: int | None = None, **by_family: Callable):
        self.by_family = by_family
        self.families = tuple(by_family)
        self.whole_set = whole_set
        self.batch_size = batch_size  # items per call for the text families (None: the caller's default)

    def for_family(self, family: str) -> Callable:
        return self.by_family[family]

    def __call__(self, model, units, targets, *, generator, **options):
        """Called like a scorer of one's own: the first family's implementation (the ViT's where it has one)."""
        return self.by_family[self.families[0]](model, units, targets, generator=generator, **options)


def scorer_for(name: str, family: str = "classification") -> Callable:
    """The scorer `name` (built-in, an installed plugin's name or an import path) as a function for `family`:
    `score(model, units, targets, *, generator) -> (B, n)`; a one-line error if it cannot score that family."""
    scorer = SCORERS.load_for(name, family, ("classification",))  # a scorer of one's own: the ViT's by default
    return scorer.for_family(family) if isinstance(scorer, Scorer) else scorer


def _vit_random(model, units: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(units.shape[0], units.shape[1] * units.shape[2], generator=generator)


def _vit_rollout(model, units: torch.Tensor, labels: torch.Tensor, *, generator=None) -> torch.Tensor:
    return _rollout(model, units)


def _vit_chefer(model, units: torch.Tensor, labels: torch.Tensor, *, generator=None) -> torch.Tensor:
    return _chefer(model, units, labels)


def _vit_gradcam(model, units: torch.Tensor, labels: torch.Tensor, *, generator=None) -> torch.Tensor:
    return _gradcam(model, units, labels)


def _vit_atman(model, units: torch.Tensor, labels: torch.Tensor, *, generator=None, suppression: float = 0.9,
               conceptual: float | None = None) -> torch.Tensor:  # fmt: skip
    return _atman(model, units, labels, suppression, conceptual)


def _blip(method: str) -> Callable:
    """BLIP's relevance `method` for an item's text target (continual/blip_relevance.py, through the model)."""

    def score(model, units: torch.Tensor, targets: tuple, *, generator: torch.Generator) -> torch.Tensor:
        return model.relevance(units, None, *targets, method=method, generator=generator)

    return score


_TEXT_FAMILIES = tuple(f for f in ALL_FAMILIES if f != "classification")
ROLLOUT = Scorer(classification=_vit_rollout)
CHEFER = Scorer(classification=_vit_chefer)
GRADCAM = Scorer(classification=_vit_gradcam)
# text families: 16 items per call, as AtMan runs h*w perturbed copies of each
ATMAN = Scorer(batch_size=16, classification=_vit_atman, **dict.fromkeys(_TEXT_FAMILIES, _blip("atman")))
# whole set: one draw of (M, n) from the seeded generator for classification (per batch for BLIP, as it always was)
RANDOM = Scorer(whole_set=True, classification=_vit_random, **dict.fromkeys(_TEXT_FAMILIES, _blip("random")))
GRADIENT = Scorer(**dict.fromkeys(_TEXT_FAMILIES, _blip("gradient")))


def _options_for(score: Callable, options: dict) -> dict:
    """The keyword options `score` accepts (AtMan's suppression and look-alike threshold), the others dropped."""
    try:
        accepted = inspect.signature(score).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in options.items() if k in accepted}


def _check_scores(scores: torch.Tensor, batch: int, n: int, name: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (batch, n):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TokenforgeError(f"memory.scorer: {name!r} returned {shape}, expected a tensor of shape {(batch, n)}")
    return scores.float().cpu()


def token_scores(
    model,
    units: np.ndarray,
    labels: np.ndarray,
    scorer: str,
    seed: int,
    batch_size: int = 128,
    *,
    suppression: float = 0.9,
    conceptual: float | None = None,
) -> torch.Tensor:
    """A relevance score per grid token (M, h*w) float32, higher = more relevant, for each sample's own label.

    `units`: code ids (M, h, w) or uint8 pixel patches (M, h, w, F); `labels`: (M,). `seed` seeds the generator
    the scorer gets (the random control draws from it). `suppression` and `conceptual` are AtMan's suppression factor
    and look-alike threshold."""
    score = scorer_for(scorer, "classification")
    units = np.asarray(units)
    labels = np.asarray(labels)
    if units.ndim not in (3, 4):
        raise TokenforgeError(f"memory: units must be (M, h, w) ids or (M, h, w, F) patches, got shape {units.shape}")
    if labels.shape != (len(units),):
        raise TokenforgeError(f"memory: {len(units)} samples but labels of shape {labels.shape}")
    if not 0 <= suppression <= 1:  # AtMan's; checked for every scorer, so a bad value fails before any scoring
        raise TokenforgeError(f"memory.suppression: must be in [0, 1], got {suppression}")
    m, n = len(units), units.shape[1] * units.shape[2]
    generator = torch.Generator().manual_seed(seed)
    whole = getattr(SCORERS.load(scorer), "whole_set", False)
    if whole:
        return _check_scores(score(model, torch.from_numpy(units), torch.from_numpy(labels), generator=generator), m, n, scorer)
    if m == 0:
        return torch.zeros(0, n)
    if batch_size < 1:
        raise TokenforgeError(f"memory.batch_size: must be at least 1, got {batch_size}")
    num_classes = model.vit.num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise TokenforgeError(f"memory: labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    options = _options_for(score, {"suppression": suppression, "conceptual": conceptual})
    out = []
    device = device_of(model)  # a GPU after GPU training; the scores come back to the CPU
    with _eval_mode(model):
        for i in range(0, m, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(units[i : i + batch_size])).to(device)
            target = torch.from_numpy(labels[i : i + batch_size].astype(np.int64)).to(device)
            out.append(_check_scores(score(model, batch, target, generator=generator, **options), len(batch), n, scorer))
    return torch.cat(out)


def top_positions(scores: torch.Tensor, k: int) -> np.ndarray:
    """int64 (M, k): each row's k highest-scoring positions, most relevant first; ties go to the lower position (stable)."""
    if scores.ndim != 2:
        raise TokenforgeError(f"memory: scores must be (M, h*w), got shape {tuple(scores.shape)}")
    if not 0 <= k <= scores.shape[1]:
        raise TokenforgeError(f"memory: cannot keep {k} of {scores.shape[1]} tokens")
    order = torch.argsort(-scores.detach().float(), dim=1, stable=True)[:, :k]
    return order.numpy().astype(np.int64)


def family_scorers(family: str) -> tuple[str, ...]:
    """The built-in scorers that can score `family`, in registration order."""
    return tuple(n for n in SCORERS.builtin_names() if family in SCORERS.load(n).families)
