import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tokenforge.errors import TokenforgeError
from tokenforge.models import store
from tokenforge.models.attention import TokenAttention, TokenBlock
from tokenforge.models.vit import ModelConfig, TokenViT, load_model, save_model


def config(**overrides) -> ModelConfig:
    base = {"grid": (4, 4), "codebook_size": 32, "code_dim": 8, "num_classes": 6, "embed_dim": 32, "depth": 2}
    return ModelConfig(**{**base, **overrides})


def tiny(num_classes=6, **overrides):
    torch.manual_seed(0)
    return TokenViT(config(num_classes=num_classes, **overrides), torch.randn(32, 8)).eval()


def timm_twin(model: TokenViT):
    """timm's own VisionTransformer, built under the same seed as `tiny`: the reference for init and forward."""
    from timm.models.vision_transformer import VisionTransformer

    cfg = model.config
    torch.manual_seed(0)
    torch.randn(32, 8)  # the codebook draw comes first in `tiny`
    return VisionTransformer(
        img_size=cfg.grid, patch_size=1, in_chans=cfg.code_dim, num_classes=cfg.num_classes, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, drop_path_rate=cfg.drop_path,
        class_token=True, reg_tokens=cfg.prompts, global_pool="token",
    ).eval()


def subset(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return ids.flatten(1).gather(1, positions)


class Recorder(nn.Module):
    """A block that records the positions it is given, then runs the wrapped block."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block, self.seen = block, []

    def forward(self, x, positions=None):
        self.seen.append(positions)
        return self.block(x, positions=positions)


class NoPositions(nn.Module):
    """A block whose forward takes no positions (a plain timm block): it must still be called."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block, self.calls = block, 0

    def forward(self, x):
        self.calls += 1
        return self.block(x)


# --- one forward for full grids and subsets -------------------------------------------------------------


def test_partial_forward_with_all_tokens_equals_full_forward():
    model = tiny()
    ids = torch.randint(0, 32, (3, 4, 4))
    full = model(ids)
    # Full grids go through timm's 1x1 convolution, subsets through the same weights as a linear map: equal up
    # to the last bits of the projection.
    partial = model(ids.flatten(1), torch.arange(16).expand(3, 16))
    assert full.shape == (3, 6)
    assert torch.allclose(full, partial, atol=1e-5)
    order = torch.stack([torch.randperm(16) for _ in range(3)])  # any order: the class token reads a set
    assert torch.allclose(full, model(subset(ids, order), order), atol=1e-5)
    assert torch.allclose(model.features(ids), model.features(ids.flatten(1), torch.arange(16).expand(3, 16)), atol=1e-5)


def test_partial_forward_depends_on_positions():
    model = tiny()
    ids = torch.randint(0, 32, (2, 5))
    a = model(ids, torch.tensor([[0, 1, 2, 3, 4]] * 2))
    b = model(ids, torch.tensor([[11, 12, 13, 14, 15]] * 2))
    assert not torch.allclose(a, b)


def test_embedded_inputs_give_the_same_logits():
    model = tiny()
    ids = torch.randint(0, 32, (3, 4, 4))
    emb = model.embed(ids)
    assert torch.equal(model(ids), model(emb.permute(0, 3, 1, 2)))
    pos = torch.tensor([[1, 5, 9]] * 3)
    assert torch.equal(model(subset(ids, pos), pos), model(model.embed(subset(ids, pos)), pos))


def test_initialisation_and_full_forward_are_timms():
    model = tiny()
    twin = timm_twin(model)
    ours, theirs = model.vit.state_dict(), twin.state_dict()
    assert list(ours) == list(theirs)  # same names, same order: the same safetensors bytes
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert next(iter(model.state_dict())) == "codebook"
    ids = torch.randint(0, 32, (3, 4, 4))
    emb = model.embed(ids).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert torch.equal(model(ids), twin(emb))  # bitwise timm's forward
        assert torch.equal(model.features(ids), twin.forward_head(twin.forward_features(emb), pre_logits=True))
    assert all(isinstance(block, TokenBlock) and isinstance(block.attn, TokenAttention) for block in model.vit.blocks)


@pytest.mark.parametrize("drop_path", [0.0, 0.2])
def test_training_gradients_are_timms(drop_path):
    model = tiny(drop_path=drop_path).train()
    twin = timm_twin(model).train()
    ids, y = torch.randint(0, 32, (4, 4, 4)), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(5)
    F.cross_entropy(model(ids), y).backward()
    torch.manual_seed(5)
    F.cross_entropy(twin(model.embed(ids).permute(0, 3, 1, 2)), y).backward()
    theirs = dict(twin.named_parameters())
    for name, p in model.vit.named_parameters():
        assert torch.equal(p.grad, theirs[name].grad), name


@pytest.mark.parametrize("kind", ["full", "subset"])
def test_grad_checkpointing_gives_the_same_logits_and_gradients(kind):
    ids, y = torch.randint(0, 32, (3, 4, 4)), torch.tensor([0, 1, 2])
    pos = torch.tensor([[0, 3, 6, 9, 12]] * 3)
    results = []
    for checkpointing in (False, True):
        model = tiny().train()
        model.vit.set_grad_checkpointing(checkpointing)
        recorder = model.vit.blocks[1] = Recorder(model.vit.blocks[1])
        logits = model(ids) if kind == "full" else model(subset(ids, pos), pos)
        F.cross_entropy(logits, y).backward()
        results.append((logits.detach(), {k: p.grad for k, p in model.named_parameters()}, recorder.seen))
    (a, grads_a, seen_a), (b, grads_b, seen_b) = results
    assert torch.equal(a, b)
    assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
    assert len(seen_b) == 2 and torch.equal(seen_b[0], seen_a[0])  # recomputed in the backward, with positions


def test_positions_reach_every_block_that_takes_them():
    model = tiny(depth=3)
    recorder = model.vit.blocks[0] = Recorder(model.vit.blocks[0])
    plain = model.vit.blocks[2] = NoPositions(model.vit.blocks[2])
    ids = torch.randint(0, 32, (2, 4, 4))
    with torch.no_grad():
        model(ids)
        pos = torch.tensor([[2, 7, 11], [0, 1, 15]])
        model(subset(ids, pos), pos)
    assert torch.equal(recorder.seen[0], torch.arange(16).expand(2, 16))  # a full grid: every position, in order
    assert torch.equal(recorder.seen[1], pos)
    assert plain.calls == 2


def test_bf16_weights_take_float_and_id_inputs():
    model = tiny().to(torch.bfloat16)
    ids = torch.randint(0, 32, (2, 4, 4))
    pos = torch.tensor([[0, 5, 10]] * 2)
    assert model(ids).dtype == torch.bfloat16
    assert model(subset(ids, pos), pos).dtype == torch.bfloat16
    assert model(torch.randn(2, 8, 4, 4)).dtype == torch.bfloat16


# --- prompts: extra prefix tokens ---------------------------------------------------------------------


def test_no_prompts_means_no_parameter():
    assert "vit.reg_token" not in tiny().state_dict()
    assert list(tiny().state_dict()) == list(tiny(prompts=0).state_dict())


def test_prompts_are_prefix_tokens_that_survive_subsets():
    model = tiny(prompts=2)
    assert model.vit.num_prefix_tokens == 3 and model.vit.reg_token.shape == (1, 2, 32)
    ids = torch.randint(0, 32, (2, 4, 4))
    pos = torch.tensor([[1, 4, 8, 13]] * 2)
    with torch.no_grad():
        assert model.forward_tokens(ids).shape == (2, 3 + 16, 32)
        assert model.forward_tokens(subset(ids, pos), pos).shape == (2, 3 + 4, 32)
        assert torch.allclose(model(ids), model(ids.flatten(1), torch.arange(16).expand(2, 16)), atol=1e-5)
        before = (model(ids), model(subset(ids, pos), pos))
        model.vit.reg_token.copy_(10 * torch.randn(1, 2, 32))
        after = (model(ids), model(subset(ids, pos), pos))
    assert not torch.allclose(before[0], after[0]) and not torch.allclose(before[1], after[1])
    twin = timm_twin(model)  # timm's register tokens: timm's forward gives the same bits
    twin.load_state_dict(model.vit.state_dict())
    with torch.no_grad():
        assert torch.equal(model(ids), twin(model.embed(ids).permute(0, 3, 1, 2)))


# --- the probe --------------------------------------------------------------------------------------------


def test_probe_records_attention_maps_that_sum_to_one():
    model = tiny(depth=3)
    ids = torch.randint(0, 32, (2, 4, 4))
    emb = model.embed(ids).permute(0, 3, 1, 2).requires_grad_(True)
    with model.probe(attention=True) as probe:
        logits = model(emb)
    maps = probe.maps
    assert len(maps) == 3 and all(m.shape == (2, 4, 17, 17) for m in maps)
    assert all(torch.allclose(m.sum(-1), torch.ones(2, 4, 17)) for m in maps)
    grads = torch.autograd.grad(logits[:, 0].sum(), maps)  # in the autograd graph
    assert all(g.shape == m.shape for g, m in zip(grads, maps))
    assert torch.allclose(logits, model(ids), atol=1e-5)  # unfused, so equal only up to rounding
    with model.probe(attention=[2]) as probe:
        model(ids)
    assert len(probe.maps) == 1 and probe.blocks == (2,)


def test_probe_maps_and_logits_are_timms_unfused_attention():
    model = tiny()
    twin = timm_twin(model)
    maps = []
    for block in twin.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: maps.append(out))
    ids = torch.randint(0, 32, (3, 4, 4))
    with torch.no_grad(), model.probe(attention=True) as probe:
        logits = model(ids)
    with torch.no_grad():
        expected = twin(model.embed(ids).permute(0, 3, 1, 2))
    assert torch.equal(logits, expected)
    assert all(torch.equal(a, b) for a, b in zip(probe.maps, maps))


def test_probe_key_scale_scales_the_keys_and_ones_change_nothing():
    model = tiny()
    ids = torch.randint(0, 32, (2, 4, 4))
    with torch.no_grad():
        plain = model(ids)
        with model.probe(key_scale=torch.ones(2, 17)):
            assert torch.equal(model(ids), plain)
        scale = torch.ones(2, 17)
        scale[:, 5] = 0.1
        with model.probe(key_scale=scale, attention=True) as probe:
            suppressed = model(ids)
    assert not torch.allclose(suppressed, plain)
    with torch.no_grad(), model.probe(attention=True) as reference:
        model(ids)
    assert not torch.allclose(probe.maps[0], reference.maps[0])  # the first block's input is the same: its map changed
    assert torch.allclose(probe.maps[0].sum(-1), torch.ones(2, 4, 17))


def test_probe_prefix_only_computes_only_the_prefix_tokens():
    model = tiny(prompts=1)
    ids = torch.randint(0, 32, (3, 4, 4))
    pos = torch.tensor([[0, 2, 9]] * 3)
    with torch.no_grad():
        full, part = model(ids), model(subset(ids, pos), pos)
        with model.probe(prefix_only=True):
            assert model.forward_tokens(ids).shape == (3, 2, 32)
            assert torch.allclose(model(ids), full, atol=1e-5)
            assert torch.allclose(model(subset(ids, pos), pos), part, atol=1e-5)
            features = model.features(subset(ids, pos), pos)
        assert torch.allclose(features, model.features(subset(ids, pos), pos), atol=1e-5)


def test_probe_is_undone_on_exit_even_after_an_error():
    model = tiny()
    with pytest.raises(RuntimeError, match="boom"), model.probe(attention=True, key_scale=torch.ones(1, 17), prefix_only=True):
        raise RuntimeError("boom")
    assert model._probe is None and all(block.attn.probe is None for block in model.vit.blocks)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    with model.probe(), pytest.raises(TokenforgeError, match="already active"), model.probe():
        pass
    with pytest.raises(TokenforgeError, match="out of range"), model.probe(attention=[2]):
        pass
    with model.probe(attention=True) as probe:
        pass
    with pytest.raises(TokenforgeError, match="no attention recorded"):
        _ = probe.maps


# --- saving and loading ---------------------------------------------------------------------------------


def test_codebook_is_frozen_buffer():
    model = tiny()
    assert "codebook" not in dict(model.named_parameters())
    assert "codebook" in model.state_dict()


def test_save_load_round_trip(tmp_path):
    model = tiny()
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    ids = torch.randint(0, 32, (2, 4, 4))
    assert torch.equal(model(ids), again(ids))
    assert store.save_model is save_model and store.load_model is load_model  # models.vit re-exports them


def test_prompts_round_trip_and_old_configs_load(tmp_path):
    model = tiny(prompts=3)
    save_model(model, tmp_path / "a")
    again = load_model(tmp_path / "a")
    assert again.config.prompts == 3
    ids = torch.randint(0, 32, (2, 4, 4))
    assert torch.equal(model(ids), again(ids))
    save_model(tiny(), tmp_path / "b")
    raw = json.loads((tmp_path / "b" / "model.json").read_text())
    assert "prompts" not in raw  # an option that is off is left out: plain configs are as before prompts existed
    assert load_model(tmp_path / "b").config.prompts == 0


def test_load_rejects_mismatched_config(tmp_path):
    save_model(tiny(num_classes=6), tmp_path)
    text = (tmp_path / "model.json").read_text().replace('"num_classes": 6', '"num_classes": 7')
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(TokenforgeError, match="do not match"):
        load_model(tmp_path)


def test_load_missing(tmp_path):
    with pytest.raises(TokenforgeError, match="model file not found"):
        load_model(tmp_path)
