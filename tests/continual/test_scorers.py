from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenforge.continual.scorers import family_scorers, token_scores, top_positions

SCORERS = family_scorers("classification")
from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import ModelConfig, TokenViT

GRAD_SCORERS = ("rollout", "chefer", "gradcam", "atman")

# --- helpers -----------------------------------------------------------------------------------------


def tiny(depth: int = 2, num_classes: int = 3, seed: int = 0, sharp: bool = False) -> TokenViT:
    """A random tiny model; `sharp` scales up queries, keys and the head so attention is peaked and scores are not ~0."""
    torch.manual_seed(seed)
    cfg = ModelConfig(grid=(4, 4), codebook_size=16, code_dim=8, num_classes=num_classes, embed_dim=32, depth=depth, num_heads=2)
    model = TokenViT(cfg, torch.randn(16, 8)).eval()
    if sharp:
        with torch.no_grad():
            for block in model.vit.blocks:
                block.attn.qkv.weight[:64] *= 4.0  # queries and keys
            model.vit.head.weight *= 20.0
    return model


def tiny_prompts() -> TokenViT:
    torch.manual_seed(0)
    cfg = ModelConfig(grid=(4, 4), codebook_size=16, code_dim=8, num_classes=3, embed_dim=32, depth=2, num_heads=2, prompts=2)
    return TokenViT(cfg, torch.randn(16, 8)).eval()


def tiny_pixels() -> TokenViT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        grid=(4, 4), codebook_size=0, code_dim=12, num_classes=3, embed_dim=32, depth=2, num_heads=2, input="pixels"
    )
    return TokenViT(cfg).eval()  # no codebook: units are uint8 patches of 12 values


def sample(m: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 16, (m, 4, 4)).astype(np.int64), rng.integers(0, 3, m).astype(np.int64)


def manual_forward(model: TokenViT, units: torch.Tensor, column_scale: tuple[int, float] | None = None):
    """timm's ViT written out by hand (no hooks): logits and every block's attention probabilities.

    `column_scale=(j, factor)` multiplies the pre-softmax logits of grid token j's column in every block (AtMan)."""
    vit = model.vit
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(model.embed(units).permute(0, 3, 1, 2))))
    maps = []
    for blk in vit.blocks:
        a = blk.attn
        h = blk.norm1(x)
        b, n, c = h.shape
        q, k, v = a.qkv(h).reshape(b, n, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * a.scale) @ k.transpose(-2, -1)
        if column_scale is not None:
            j, factor = column_scale
            logits = torch.cat(
                [logits[..., : 1 + j], logits[..., 1 + j : 2 + j] * factor, logits[..., 2 + j :]], dim=-1
            )
        attn = logits.softmax(dim=-1)
        if attn.requires_grad:
            attn.retain_grad()
        maps.append(attn)
        x = x + a.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        x = x + blk.mlp(blk.norm2(x))
    return vit.head(vit.norm(x)[:, 0]), maps


def old_rollout(model: TokenViT, ids: torch.Tensor) -> torch.Tensor:
    """The rollout that lived in memory.py (attention recomputed from each block's qkv in a forward hook)."""
    maps = []

    def hook(attn, inputs, _output):
        x = inputs[0]
        b, n, _ = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        maps.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))

    handles = [block.attn.register_forward_hook(hook) for block in model.vit.blocks]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    n = maps[0].shape[-1]
    eye = torch.eye(n)
    rollout = eye.expand(maps[0].shape[0], n, n)
    for attn in maps:
        a = attn.mean(dim=1) + eye
        rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
    return rollout[:, 0, model.vit.num_prefix_tokens :]


# --- 1. a planted token whose position decides the class -----------------------------------------------

PLANTED = 9  # the deciding grid position (row 2, column 1)
CLASSES = 16  # the class is the code at PLANTED (codes 0..15); every other position holds a noise code 16..63
CODES = 64


def planted_data(m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    units = rng.integers(CLASSES, CODES, (m, 4, 4))  # noise, independent of the class
    labels = rng.integers(0, CLASSES, m)
    units.reshape(m, 16)[:, PLANTED] = labels
    return units.astype(np.int64), labels.astype(np.int64)


@pytest.fixture(scope="module")
def planted():
    """A tiny TokenViT trained until it reads the class off the planted position; held-out samples to score."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train_units, train_labels = planted_data(512, rng)
    test_units, test_labels = planted_data(200, rng)
    cfg = ModelConfig(grid=(4, 4), codebook_size=CODES, code_dim=8, num_classes=CLASSES, embed_dim=32, depth=2, num_heads=2)
    model = TokenViT(cfg, torch.randn(CODES, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(train_units), torch.from_numpy(train_labels)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        train_acc = (model(x).argmax(1) == y).float().mean().item()
        test_acc = (model(torch.from_numpy(test_units)).argmax(1) == torch.from_numpy(test_labels)).float().mean().item()
    assert train_acc >= 0.99, f"the planted-token model did not learn its task (train accuracy {train_acc:.3f})"
    assert test_acc >= 0.95, f"the planted-token model does not generalise (held-out accuracy {test_acc:.3f})"
    return model, test_units, test_labels


def planted_first_rate(planted, scorer: str) -> float:
    model, units, labels = planted
    return float((top_positions(token_scores(model, units, labels, scorer, seed=0), 1)[:, 0] == PLANTED).mean())


@pytest.mark.parametrize(
    "scorer",
    [
        "rollout",
        "chefer",
        "atman",
        pytest.param(
            "gradcam",
            marks=pytest.mark.xfail(
                reason="known limitation of the method here: the last block's head-mean attention gradients are often "
                "negative, clamp(min=0) then zeroes the whole map (~25-50% of samples) and ties fall to position 0; "
                "planted token first for 50% of samples at this seed, 29-57% over seeds 0-4",
                strict=False,
            ),
        ),
    ],
)
def test_planted_token_ranked_first(planted, scorer):
    rate = planted_first_rate(planted, scorer)
    assert rate >= 0.9, f"{scorer} ranks the planted position first for only {rate:.0%} of held-out samples"


def test_gradcam_planted_token_above_chance(planted):
    # Attention GradCAM looks at the last block only and weights each head by its mean gradient; here it finds the
    # planted token far more often than chance (1/16) but well short of 90% (see the xfail above).
    assert planted_first_rate(planted, "gradcam") >= 0.25


def test_random_planted_token_near_chance(planted):
    assert planted_first_rate(planted, "random") < 0.3


# --- 2. determinism --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", SCORERS)
def test_scores_are_deterministic(scorer):
    model = tiny()
    units, labels = sample(7)
    a = token_scores(model, units, labels, scorer, seed=3, batch_size=4)
    b = token_scores(model, units, labels, scorer, seed=3, batch_size=4)
    assert a.dtype == torch.float32 and a.shape == (7, 16)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()


def test_random_depends_on_seed_only():
    model = tiny()
    units, labels = sample(4)
    a = token_scores(model, units, labels, "random", seed=1)
    assert torch.equal(a, token_scores(None, units, labels, "random", seed=1))
    assert not torch.equal(a, token_scores(model, units, labels, "random", seed=2))


def test_batching_does_not_change_scores():
    model = tiny()
    units, labels = sample(9)
    for scorer in GRAD_SCORERS:
        whole = token_scores(model, units, labels, scorer, seed=0, batch_size=128)
        parts = token_scores(model, units, labels, scorer, seed=0, batch_size=2)
        assert torch.allclose(whole, parts, atol=1e-6, rtol=1e-5), scorer


# --- 3. shapes and edge cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", SCORERS)
def test_no_samples_gives_an_empty_score_matrix(scorer):
    scores = token_scores(tiny(), np.zeros((0, 4, 4), np.int64), np.zeros(0, np.int64), scorer, seed=0)
    assert scores.shape == (0, 16) and scores.dtype == torch.float32


@pytest.mark.parametrize("scorer", SCORERS)
def test_pixel_units_work(scorer):
    model = tiny_pixels()
    rng = np.random.default_rng(0)
    units = rng.integers(0, 256, (3, 4, 4, 12)).astype(np.uint8)
    scores = token_scores(model, units, np.array([0, 1, 2]), scorer, seed=0)
    assert scores.shape == (3, 16) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()


def test_unknown_scorer_is_a_config_error():
    units, labels = sample(2)
    with pytest.raises(TokenforgeError, match=r"memory\.scorer.*'saliency'.*rollout, chefer, gradcam, atman, random"):
        token_scores(tiny(), units, labels, "saliency", seed=0)
    with pytest.raises(TokenforgeError, match="memory.scorer"):
        token_scores(tiny(), units[:0], labels[:0], "saliency", seed=0)  # checked even with nothing to score


def test_mismatched_labels_are_an_error():
    units, labels = sample(3)
    with pytest.raises(TokenforgeError, match="labels"):
        token_scores(tiny(), units, labels[:2], "chefer", seed=0)
    with pytest.raises(TokenforgeError, match="labels"):
        token_scores(tiny(), units, labels + 3, "atman", seed=0)  # the model has 3 classes


def test_top_positions_orders_by_score_and_breaks_ties_by_position():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.9], [0.0, 0.0, 0.0, 0.0], [3.0, -1.0, 2.0, 2.0]])
    top = top_positions(scores, 3)
    assert top.dtype == np.int64 and top.shape == (3, 3)
    assert top.tolist() == [[3, 1, 2], [0, 1, 2], [0, 2, 3]]
    assert top_positions(scores, 0).shape == (3, 0)
    assert top_positions(torch.zeros(0, 4), 2).shape == (0, 2)
    with pytest.raises(TokenforgeError):
        top_positions(scores, 5)


# --- 4. the model is left as it was -----------------------------------------------------------------------


@pytest.mark.parametrize("scorer", GRAD_SCORERS)
def test_scoring_leaves_the_model_untouched(scorer):
    model = tiny()
    model.train()  # a caller in training mode gets it back in training mode
    units, labels = sample(4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.eval()
        before = model(torch.from_numpy(units))
        model.train()
    token_scores(model, units, labels, scorer, seed=0)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert model._probe is None and all(block.attn.probe is None for block in model.vit.blocks)  # probe undone
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert "forward" not in vars(module)  # no temporary forward left on an instance
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(torch.from_numpy(units)), before)


def test_frozen_parameters_still_get_gradient_scores():
    model = tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    units, labels = sample(3)
    for scorer in ("chefer", "gradcam"):
        scores = token_scores(model, units, labels, scorer, seed=0)
        assert scores.shape == (3, 16)
    assert all(not p.requires_grad for p in model.parameters())


# --- 5. the maths, against independent references ---------------------------------------------------------


def test_rollout_matches_the_old_memory_implementation():
    model = tiny(depth=3)
    units, labels = sample(6)
    ids = torch.from_numpy(units)
    ours = token_scores(model, units, labels, "rollout", seed=0)
    assert torch.allclose(ours, old_rollout(model, ids), atol=1e-6)


def test_rollout_is_label_independent():
    model = tiny()
    units, labels = sample(4)
    assert torch.equal(
        token_scores(model, units, labels, "rollout", seed=0), token_scores(model, units, (labels + 1) % 3, "rollout", seed=0)
    )


def test_chefer_and_gradcam_match_a_hand_written_reference():
    model = tiny(depth=3, seed=1, sharp=True)
    units, labels = sample(6, seed=1)
    ids, y = torch.from_numpy(units), torch.from_numpy(labels)
    logits, maps = manual_forward(model, ids)
    assert torch.allclose(logits, model(ids), atol=1e-5)
    logits.gather(1, y[:, None]).sum().backward()
    relevance = torch.eye(17).expand(6, 17, 17)
    for attn in maps:
        relevance = relevance + (attn.grad * attn).clamp(min=0).mean(dim=1) @ relevance
    chefer = token_scores(model, units, labels, "chefer", seed=0)
    assert torch.allclose(chefer, relevance[:, 0, 1:].detach(), atol=1e-6, rtol=1e-5)
    last = maps[-1]
    cam = (last.grad.mean(dim=(-2, -1), keepdim=True) * last).mean(dim=1).clamp(min=0)[:, 0, 1:].detach()
    gradcam = token_scores(model, units, labels, "gradcam", seed=0)
    assert (cam > 0).any()  # not all clamped away
    assert torch.allclose(gradcam, cam, atol=1e-7)


def test_gradient_scorers_follow_the_label():
    model = tiny(depth=3, seed=1, sharp=True)
    units, labels = sample(6, seed=1)
    for scorer in ("chefer", "gradcam", "atman"):
        a = token_scores(model, units, labels, scorer, seed=0)
        b = token_scores(model, units, (labels + 1) % 3, scorer, seed=0)
        assert not torch.equal(a, b), scorer


def test_atman_matches_suppressing_one_column_at_a_time():
    model = tiny(depth=3, seed=1, sharp=True)
    units, labels = sample(3, seed=2)
    ids, y = torch.from_numpy(units), torch.from_numpy(labels)
    with torch.no_grad():
        base = F.cross_entropy(manual_forward(model, ids)[0], y, reduction="none")
        expected = torch.stack(
            [F.cross_entropy(manual_forward(model, ids, (j, 0.1))[0], y, reduction="none") - base for j in range(16)], dim=1
        )
    scores = token_scores(model, units, labels, "atman", seed=0)
    assert scores.abs().max() > 0.01  # the reference is not trivially small
    assert torch.allclose(scores, expected, atol=1e-5, rtol=1e-4)


def test_atman_suppression_factor_and_look_alikes():
    model = tiny()
    units, labels = sample(3)
    assert torch.equal(token_scores(model, units, labels, "atman", seed=0, suppression=0.0), torch.zeros(3, 16))
    plain = token_scores(model, units, labels, "atman", seed=0)
    # A threshold no similarity exceeds suppresses only the token itself.
    assert torch.allclose(token_scores(model, units, labels, "atman", seed=0, conceptual=1.5), plain, atol=1e-7)
    # Every unit the same code: each token's look-alikes are all the tokens, so every token scores the same.
    same = np.full((2, 4, 4), 5, np.int64)
    scores = token_scores(model, same, np.array([0, 1]), "atman", seed=0, conceptual=0.9)
    assert torch.allclose(scores, scores[:, :1].expand(2, 16), atol=1e-6)
    assert not torch.allclose(scores, token_scores(model, same, np.array([0, 1]), "atman", seed=0), atol=1e-6)
    with pytest.raises(TokenforgeError, match="memory.suppression"):
        token_scores(model, units, labels, "atman", seed=0, suppression=1.5)


# --- 6. the probe API gives what timm's own modules give (the scorers' previous implementation) -------------


def timm_twin(model: TokenViT):
    """timm's VisionTransformer with the model's weights (same names: timm's state dict loads as is)."""
    from timm.models.vision_transformer import VisionTransformer

    cfg = model.config
    twin = VisionTransformer(
        img_size=cfg.grid, patch_size=1, in_chans=cfg.code_dim, num_classes=cfg.num_classes, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, class_token=True, reg_tokens=cfg.prompts,
        global_pool="token",
    )
    twin.load_state_dict(model.vit.state_dict())
    return twin.eval()


def hooked_maps(twin, emb: torch.Tensor, blocks: list[int]):
    """Logits and attention maps read as the scorers used to: timm's unfused path, a hook on `attn_drop`."""
    maps = {}
    for i in blocks:
        twin.blocks[i].attn.fused_attn = False
        twin.blocks[i].attn.attn_drop.register_forward_hook(lambda _m, _i, out, i=i: maps.__setitem__(i, out))
    return twin(emb), [maps[i] for i in blocks]


def hooked_prefix_only_atman(twin, emb: torch.Tensor, labels: torch.Tensor, suppression: float = 0.9) -> torch.Tensor:
    """AtMan as it used to run: keys scaled by a `k_norm` hook, the last block's forward re-written for the prefix."""
    state = {}
    for block in twin.blocks:
        block.attn.k_norm.register_forward_hook(lambda _m, _i, k: k if "f" not in state else k * state["f"][:, None, :, None])
    block, attn, prefix = twin.blocks[-1], twin.blocks[-1].attn, twin.num_prefix_tokens

    def forward(x):
        b, n, _ = x.shape
        h, width = block.norm1(x), attn.num_heads * attn.head_dim
        q = F.linear(h[:, :prefix], attn.qkv.weight[:width], attn.qkv.bias[:width])
        kv = F.linear(h, attn.qkv.weight[width:], attn.qkv.bias[width:])
        q = attn.q_norm(q.reshape(b, prefix, attn.num_heads, attn.head_dim).transpose(1, 2))
        k, v = kv.reshape(b, n, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, attn.k_norm(k), v, scale=attn.scale)
        y = x[:, :prefix] + attn.proj(out.transpose(1, 2).reshape(b, prefix, width))
        return y + block.mlp(block.norm2(y))

    block.forward = forward
    b, n = emb.shape[0], emb.shape[2] * emb.shape[3]
    eye = torch.eye(n)
    factors = torch.cat([torch.ones(b, n, prefix), (1.0 - suppression * eye).expand(b, n, n)], dim=2)
    base = F.cross_entropy(twin(emb), labels, reduction="none")
    state["f"] = factors.flatten(0, 1)
    logits = twin(emb.repeat_interleave(n, dim=0))
    return F.cross_entropy(logits, labels.repeat_interleave(n), reduction="none").reshape(b, n) - base[:, None]


@pytest.mark.parametrize("make", [lambda: tiny(depth=3, seed=1, sharp=True), tiny_prompts, tiny_pixels])
def test_scores_are_bitwise_those_of_timms_own_modules(make):
    model = make()
    rng = np.random.default_rng(3)
    if model.config.input == "pixels":
        units = rng.integers(0, 256, (5, 4, 4, 12)).astype(np.uint8)
    else:
        units = rng.integers(0, 16, (5, 4, 4)).astype(np.int64)
    labels = rng.integers(0, 3, 5).astype(np.int64)
    emb = model.embed(torch.from_numpy(units)).permute(0, 3, 1, 2).detach()
    y, prefix, depth = torch.from_numpy(labels), model.vit.num_prefix_tokens, len(model.vit.blocks)
    with torch.no_grad():
        _, maps = hooked_maps(timm_twin(model), emb, list(range(depth)))
    n = maps[0].shape[-1]
    rollout = torch.eye(n).expand(5, n, n)
    for attn in maps:
        a = attn.mean(dim=1) + torch.eye(n)
        rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
    assert torch.equal(token_scores(model, units, labels, "rollout", seed=0), rollout[:, 0, prefix:])
    leaf = emb.clone().requires_grad_(True)
    logits, maps = hooked_maps(timm_twin(model), leaf, list(range(depth)))
    grads = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), maps)
    relevance = torch.eye(n).expand(5, n, n)
    for attn, grad in zip(maps, grads):
        relevance = relevance + (grad * attn).clamp(min=0).mean(dim=1) @ relevance
    assert torch.equal(token_scores(model, units, labels, "chefer", seed=0), relevance[:, 0, prefix:])
    logits, (last,) = hooked_maps(timm_twin(model), leaf, [depth - 1])  # the other blocks stay fused
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), [last])
    cam = (grad.mean(dim=(-2, -1), keepdim=True) * last).mean(dim=1).clamp(min=0)[:, 0, prefix:]
    assert torch.equal(token_scores(model, units, labels, "gradcam", seed=0), cam)
    with torch.no_grad():
        atman = hooked_prefix_only_atman(timm_twin(model), emb, y)
    assert torch.equal(token_scores(model, units, labels, "atman", seed=0), atman)


@pytest.mark.parametrize("scorer", SCORERS)
def test_prompt_tokens_are_left_out_of_the_scores(scorer):
    model = tiny_prompts()
    units, labels = sample(3)
    scores = token_scores(model, units, labels, scorer, seed=0)
    assert scores.shape == (3, 16) and torch.isfinite(scores).all()
