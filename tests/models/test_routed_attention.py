"""Routed attention spans (TRAR, `ModelConfig.attention = "routed"`): span masks from grid positions, the router,
sum_l alpha_l * SDPA(mask_l) against the mixed unfused maps the probe records, the equivalence with global
attention for orders (0,), hard routing and its temperature, saving and loading."""

import json

import numpy as np
import pytest
import torch

from tokenforge.continual.scorers import token_scores
from tokenforge.errors import TokenforgeError
from tokenforge.models import ATTENTIONS, ROUTINGS
from tokenforge.models.attention import AttentionProbe, Router, routing_temperature, span_masks
from tokenforge.models.expansion import ExpansionConfig
from tokenforge.models.vit import ModelConfig, TokenViT, load_model, save_model

ROUTER_KEYS = ("attn.router.fc1.weight", "attn.router.fc2.weight", "attn.router.fc2.bias")


pytestmark = pytest.mark.usefixtures("one_thread")


def config(**overrides) -> ModelConfig:
    base = {"grid": (4, 4), "codebook_size": 32, "code_dim": 8, "num_classes": 6, "embed_dim": 32, "depth": 2}
    return ModelConfig(**{**base, **overrides})


def tiny(**overrides) -> TokenViT:
    torch.manual_seed(0)
    return TokenViT(config(**overrides), torch.randn(32, 8)).eval()


def routed(**overrides) -> TokenViT:
    return tiny(**{"attention": "routed", **overrides})


def subset(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return ids.flatten(1).gather(1, positions)


def window(index: int, order: int, side: int = 4) -> set[int]:
    """Grid indices within the (2 order + 1)^2 window of `index` on a side x side grid, by hand."""
    r, c = divmod(index, side)
    return {i * side + j for i in range(side) for j in range(side) if abs(i - r) <= order and abs(j - c) <= order}


# --- span masks ------------------------------------------------------------------------------------------


def test_full_grid_masks_on_a_4x4_grid():
    model = routed()
    masks = model.grid_spans
    assert masks.shape == (1, 4, 17, 17) and masks.dtype == torch.bool
    assert "grid_spans" not in model.state_dict()  # a non-persistent buffer: rebuilt from the config
    assert masks[0, 0].all() and masks[0, 3].all()  # order 0 is global; order 3 covers a 4x4 grid from any token
    assert masks[:, :, 0, :].all() and masks[:, :, :, 0].all()  # the class token sees and is seen by all
    # hand-checked windows (grid index i is sequence index 1 + i)
    assert window(0, 1) == {0, 1, 4, 5} and window(5, 1) == {0, 1, 2, 4, 5, 6, 8, 9, 10}
    assert window(15, 2) == {5, 6, 7, 9, 10, 11, 13, 14, 15} and window(3, 1) == {2, 3, 6, 7}
    for order_index, order in enumerate((0, 1, 2, 3)):
        for i in range(16):
            allowed = {1 + j for j in window(i, order)} | {0} if order else set(range(17))
            assert set(torch.nonzero(masks[0, order_index, 1 + i]).flatten().tolist()) == allowed, (order, i)
    assert torch.equal(masks, masks.transpose(-1, -2))


def test_masks_from_positions_are_rows_and_columns_of_the_full_grid_masks():
    full = span_masks(torch.arange(16)[None], 4, (0, 1, 2, 3), 2)[0]  # two prefix tokens
    positions = torch.tensor([[2, 7, 11, 0, 13], [15, 3, 9, 4, 10]])
    masks = span_masks(positions, 4, (0, 1, 2, 3), 2)
    assert masks.shape == (2, 4, 7, 7)
    for b in range(2):
        index = torch.cat([torch.arange(2), 2 + positions[b]])
        assert torch.equal(masks[b], full[:, index][:, :, index])


def test_the_model_makes_subset_masks_from_positions(monkeypatch):
    """Blocks get the full grid's buffer for a full grid, masks of the real positions for a subset."""
    model = routed()
    seen = []
    block = model.vit.blocks[0]
    forward = block.forward
    monkeypatch.setattr(block, "forward", lambda x, **kw: seen.append(kw["spans"]) or forward(x, **kw))
    ids, pos = torch.randint(0, 32, (2, 4, 4)), torch.tensor([[0, 5, 15], [3, 6, 9]])
    with torch.no_grad():
        model(ids)
        model(subset(ids, pos), pos)
    assert seen[0] is model.grid_spans
    assert torch.equal(seen[1], span_masks(pos, 4, (0, 1, 2, 3), 1))


# --- the router and the mixed attention -------------------------------------------------------------------


def test_soft_routing_weights_sum_to_one_per_sample():
    torch.manual_seed(0)
    router = Router(32, 4, hard=False)
    alpha = router(torch.randn(5, 17, 32))
    assert alpha.shape == (5, 4) and (alpha > 0).all()
    assert torch.allclose(alpha.sum(-1), torch.ones(5))
    assert router.fc1.bias is None and router.fc1.out_features == 16  # Linear(D, D/2, no bias) -> ReLU -> Linear(D/2, L)


def manual_routed_attention(attn, x: torch.Tensor, masks: torch.Tensor):
    """TRAR's routed attention written out: the maps of every order, masked softmax, mixed by the router's weights."""
    b, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    alpha = attn.router(x)
    mixed = sum(alpha[:, i, None, None, None] * logits.masked_fill(~masks[:, i, None], float("-inf")).softmax(-1)
                for i in range(masks.shape[1]))
    out = attn.proj((mixed @ v).transpose(1, 2).reshape(b, n, -1))
    return mixed, out


def test_sum_of_fused_attentions_equals_the_mixed_unfused_attention_the_probe_records():
    model = routed()
    attn = model.vit.blocks[0].attn
    x = torch.randn(3, 17, 32)
    with torch.no_grad():
        fused = attn(x, positions=torch.arange(16).expand(3, 16))  # masks from the positions
        mixed, expected = manual_routed_attention(attn, x, model.grid_spans)
        tap = attn.probe = AttentionProbe(record=True)  # the unfused path, keeping the mixed map
        unfused = attn(x, spans=model.grid_spans)
        attn.probe = None
    assert torch.allclose(fused, expected, atol=1e-6) and torch.allclose(unfused, expected, atol=1e-6)
    assert torch.allclose(tap.map, mixed, atol=1e-6)
    ids = torch.randint(0, 32, (3, 4, 4))
    with torch.no_grad(), model.probe(attention=True) as probe:
        logits = model(ids)
        tokens = model._with_prefix(model._patch_tokens(ids, None), None, True)  # the first block's input
        first, _ = manual_routed_attention(attn, model.vit.blocks[0].norm1(tokens), model.grid_spans)
    assert torch.allclose(probe.maps[0], first, atol=1e-6)
    assert all(torch.allclose(m.sum(-1), torch.ones(3, 4, 17), atol=1e-5) for m in probe.maps)
    with torch.no_grad():
        assert torch.allclose(logits, model(ids), atol=1e-5)  # recorded (unfused) vs fused


def test_the_probe_reads_the_routed_attention():
    """One order (1): the router's weight is 1 and the recorded maps are zero outside each token's 3x3 window."""
    model = routed(orders=(1,))
    with torch.no_grad(), model.probe(attention=True) as probe:
        model(torch.randint(0, 32, (2, 4, 4)))
    outside = ~model.grid_spans[0, 0]
    assert outside.any() and all((m[:, :, outside] == 0).all() for m in probe.maps)
    assert (probe.maps[0][:, :, 1 + 0, 1 + 5] > 0).all()  # grid token 0 sees its diagonal neighbour 5


@pytest.mark.parametrize("scorer", ["rollout", "chefer", "gradcam", "atman"])
def test_attribution_scorers_run_on_a_routed_model(scorer):
    model = routed(prompts=1)
    units = np.random.default_rng(0).integers(0, 32, (5, 4, 4))
    scores = token_scores(model, units, np.arange(5) % 6, scorer, seed=0)
    assert scores.shape == (5, 16) and torch.isfinite(scores).all()


def test_prefix_only_and_key_scale_work_with_routed_attention():
    model = routed(prompts=1)
    ids, pos = torch.randint(0, 32, (3, 4, 4)), torch.tensor([[0, 2, 9], [1, 5, 15], [3, 4, 8]])
    with torch.no_grad():
        full, part = model(ids), model(subset(ids, pos), pos)
        with model.probe(prefix_only=True):
            assert torch.allclose(model(ids), full, atol=1e-5)
            assert torch.allclose(model(subset(ids, pos), pos), part, atol=1e-5)
        with model.probe(key_scale=torch.ones(3, 18)):
            assert torch.equal(model(ids), full)
        scale = torch.ones(3, 18)
        scale[:, 7] = 0.1
        with model.probe(key_scale=scale, prefix_only=True):
            assert not torch.allclose(model(ids), full)


# --- against global attention -----------------------------------------------------------------------------


def test_orders_0_is_global_attention_with_the_same_weights():
    plain, one = tiny(), routed(orders=(0,))
    # timm's weights load into everything but the routers (built after timm's initialisation: same seed, same weights)
    missing, unexpected = one.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == sorted(f"vit.blocks.{i}.{k}" for i in range(2) for k in ROUTER_KEYS)
    ids, pos = torch.randint(0, 32, (3, 4, 4)), torch.tensor([[0, 2, 9]] * 3)
    with torch.no_grad():
        assert torch.equal(one(ids), plain(ids))
        assert torch.equal(one(subset(ids, pos), pos), plain(subset(ids, pos), pos))
        with one.probe(attention=True) as a, plain.probe(attention=True) as b:
            assert torch.equal(one(ids), plain(ids))
    assert all(torch.equal(x, y) for x, y in zip(a.maps, b.maps))


def test_a_global_model_has_no_router_and_no_buffer():
    model = tiny(orders=(1, 2), routing="hard")  # settings of an option that is off
    assert not hasattr(model, "grid_spans") and all(block.attn.router is None for block in model.vit.blocks)
    assert list(model.state_dict()) == list(tiny().state_dict())


# --- hard routing -----------------------------------------------------------------------------------------


def alphas(model: TokenViT) -> list:
    """Record every block's routing weights."""
    seen = []
    for block in model.vit.blocks:
        block.attn.router.register_forward_hook(lambda _m, _i, out: seen.append(out))
    return seen


def test_hard_routing_is_one_hot_at_evaluation_and_differentiable_in_training():
    model = routed(routing="hard")
    seen = alphas(model)
    ids = torch.randint(0, 32, (4, 4, 4))
    with torch.no_grad():
        model(ids)
    for alpha in seen:
        assert ((alpha == 0) | (alpha == 1)).all() and torch.equal(alpha.sum(-1), torch.ones(4))
    seen.clear()
    model.train()
    torch.manual_seed(1)
    model(ids).logsumexp(-1).sum().backward()
    assert all(((a == 0) | (a == 1)).all() for a in seen)  # gumbel-softmax hard=True: one-hot forward
    for i in range(2):  # straight-through: gradients reach the router
        assert model.vit.blocks[i].attn.router.fc2.weight.grad.abs().sum() > 0


def test_temperature_schedule_and_setting():
    assert routing_temperature(0.0) == 10.0 and routing_temperature(1.0) == pytest.approx(0.1)
    assert routing_temperature(0.5) == pytest.approx(5.05) and routing_temperature(2.0) == pytest.approx(0.1)
    model = routed(routing="hard")
    assert all(block.attn.router.temperature == 10.0 for block in model.vit.blocks)
    model.set_progress(1.0)
    assert all(block.attn.router.temperature == pytest.approx(0.1) for block in model.vit.blocks)
    model.set_routing_temperature(3.0)
    assert all(block.attn.router.temperature == 3.0 for block in model.vit.blocks)
    soft = routed()
    soft.set_progress(1.0)  # soft routing has no temperature to follow
    assert all(block.attn.router.temperature == 10.0 for block in soft.vit.blocks)
    tiny().set_progress(0.5)  # and a global model nothing


# --- expansion, checkpointing, determinism ----------------------------------------------------------------


def test_token_expansion_thins_routed_sequences_with_their_positions_masks():
    model = routed().train()
    model.set_expansion(ExpansionConfig(steps=(0,), keep=(0.5,), r0=0.25, after=0))
    seen = []
    block = model.vit.blocks[1]
    forward = block.forward
    block.forward = lambda x, **kw: seen.append((x.shape[1], kw["positions"], kw["spans"])) or forward(x, **kw)
    model(torch.randint(0, 32, (2, 4, 4))).sum().backward()
    (n, positions, spans), = seen
    assert n == 9 and spans.shape == (2, 4, 9, 9)
    assert torch.equal(spans, span_masks(positions, 4, (0, 1, 2, 3), 1))


@pytest.mark.parametrize("routing", ROUTINGS)
def test_activation_checkpointing_and_reruns_give_the_same_bits(routing):
    ids, pos = torch.randint(0, 32, (4, 4, 4)), torch.tensor([[0, 2, 9, 14]] * 2 + [[1, 5, 6, 7]] * 2)
    results = []
    for checkpointing in (False, False, True):
        model = routed(routing=routing, drop_path=0.1).train()
        model.vit.set_grad_checkpointing(checkpointing)
        torch.manual_seed(3)
        loss = model(ids).logsumexp(-1).sum() + model(subset(ids, pos), pos).logsumexp(-1).sum()
        loss.backward()
        results.append((loss.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (a, grads_a), *others = results
    for b, grads_b in others:
        assert torch.equal(a, b) and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


# --- config, saving and loading ---------------------------------------------------------------------------


def test_bad_settings_are_refused():
    assert ATTENTIONS == ("global", "routed") and ROUTINGS == ("soft", "hard")
    for bad, message in [({"attention": "local"}, "unknown attention"), ({"routing": "argmax"}, "unknown routing"),
                         ({"orders": ()}, "orders"), ({"orders": (1, 1)}, "orders"), ({"orders": (-1,)}, "orders")]:
        with pytest.raises(TokenforgeError, match=message):
            routed(**bad)


def test_routed_round_trip_and_global_model_json_unchanged(tmp_path):
    model = routed(orders=(0, 2), routing="hard")
    save_model(model, tmp_path / "routed")
    raw = json.loads((tmp_path / "routed" / "model.json").read_text())
    assert (raw["attention"], raw["orders"], raw["routing"]) == ("routed", [0, 2], "hard")
    again = load_model(tmp_path / "routed")
    assert again.config == model.config and again.config.orders == (0, 2)
    ids = torch.randint(0, 32, (2, 4, 4))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    assert torch.equal(again.grid_spans, model.grid_spans)
    save_model(routed(), tmp_path / "defaults")  # a routed model's settings are written even at their defaults
    raw = json.loads((tmp_path / "defaults" / "model.json").read_text())
    assert (raw["attention"], raw["orders"], raw["routing"]) == ("routed", [0, 1, 2, 3], "soft")
    save_model(tiny(), tmp_path / "plain")
    text = (tmp_path / "plain" / "model.json").read_text()
    expected = {"grid": [4, 4], "codebook_size": 32, "code_dim": 8, "num_classes": 6, "embed_dim": 32, "depth": 2,
                "num_heads": 4, "mlp_ratio": 2.0, "drop_path": 0.0, "input": "tokens", "patch": 1}
    assert text == json.dumps(expected, indent=2) + "\n"  # a plain model's model.json, byte for byte as before


def test_building_is_deterministic():
    a, b = routed(), routed()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    ids = torch.randint(0, 32, (2, 4, 4))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
