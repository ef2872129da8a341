"""Visual prompt tuning (VPT, `ModelConfig.prompt_tokens`): parameters and their initialisation, the sequence layout
[CLS, (REG), P x n, units] of shallow and deep prompts for full grids and subsets, prompt dropout only in training, the
frozen backbone in eval mode, activation checkpointing, token expansion, attribution over the grid tokens only,
saving with the backbone's digest, and the fused-attention switch."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenforge.errors import TokenforgeError
from tokenforge.models.expansion import ExpansionConfig
from tokenforge.models.store import backbone_digest, is_tuned
from tokenforge.models.vit import ModelConfig, TokenViT, load_model, save_model

N = 3  # prompt tokens


def model(tokens: int = N, deep: bool = False, dropout: float = 0.0, depth: int = 3, seed: int = 0, **overrides) -> TokenViT:
    torch.manual_seed(seed)
    config = ModelConfig(grid=(4, 4), codebook_size=32, code_dim=8, num_classes=5, embed_dim=16, depth=depth,
                         prompt_tokens=tokens, prompt_deep=deep, prompt_dropout=dropout, **overrides)
    return TokenViT(config, torch.randn(32, 8))


def block_inputs(net: TokenViT) -> list:
    """Record the input sequence of every block call, in order."""
    seen = []
    for block in net.vit.blocks:
        block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


def ids(b: int = 2) -> torch.Tensor:
    return torch.randint(0, 32, (b, 4, 4), generator=torch.Generator().manual_seed(1))


# --- parameters -------------------------------------------------------------------------------------------------


def test_prompt_parameters_shapes_and_names():
    shallow, deep = model(), model(deep=True)
    assert dict(shallow.named_parameters())["prompt_embeddings"].shape == (1, N, 16)
    assert "deep_prompt_embeddings" not in dict(shallow.named_parameters())
    assert dict(deep.named_parameters())["deep_prompt_embeddings"].shape == (3 - 1, N, 16)  # input set + depth - 1
    assert shallow.vit.num_prefix_tokens == 1 + N and shallow.embedded_prefix == 1
    assert shallow.vit.pos_embed.shape == (1, 1 + 16, 16)  # no positional embedding for prompts
    assert shallow.forward_tokens(ids()).shape == (2, 1 + N + 16, 16)
    # the backbone's parameters are an unprompted model's, same seed, same names, same values
    plain = model(tokens=0)
    backbone = {k: v for k, v in shallow.state_dict().items() if "prompt" not in k}
    assert list(backbone) == list(plain.state_dict()) and all(torch.equal(v, plain.state_dict()[k]) for k, v in backbone.items())


def test_initialisation_is_uniform_within_the_fan_in_bound():
    net = model(tokens=50, deep=True, depth=4)
    bound = math.sqrt(6 / (8 + 16))  # VPT's sqrt(6 / (3 p^2 + E)) with our stem's fan-in: code_dim 8, patch 1
    for p in (net.prompt_embeddings, net.deep_prompt_embeddings):
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound
        assert abs(p.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # a uniform's std


def test_only_prompts_and_head_train():
    net = model(deep=True).train()
    trainable = sorted(k for k, p in net.named_parameters() if p.requires_grad)
    assert trainable == ["deep_prompt_embeddings", "prompt_embeddings", "vit.head.bias", "vit.head.weight"]
    assert all(is_tuned(k) == (k in trainable) for k, _ in net.named_parameters())
    F.cross_entropy(net(ids()), torch.tensor([0, 1])).backward()
    assert sorted(k for k, p in net.named_parameters() if p.grad is not None) == trainable
    assert all(net.state_dict()[k].grad is None for k in net.state_dict() if not is_tuned(k))


def test_unprompted_model_has_nothing_new():
    net = model(tokens=0, deep=True, dropout=0.5)  # settings of an option that is off: no parameter, no change
    assert not any("prompt" in k for k in net.state_dict()) and all(p.requires_grad for p in net.parameters())
    assert net.vit.num_prefix_tokens == 1 and net.train().vit.training


@pytest.mark.parametrize("kwargs, key", [({"tokens": -1}, "tokens"), ({"dropout": 1.0}, "dropout")])
def test_bad_settings_are_one_line_errors(kwargs, key):
    with pytest.raises(TokenforgeError, match=f"train.prompts.{key}"):
        model(**kwargs)


# --- the sequence ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("registers", [0, 2])
def test_shallow_prompts_follow_the_class_token_without_positional_embedding(registers):
    net = model(prompts=registers).eval()
    seen = block_inputs(net)
    x = ids()
    with torch.no_grad():
        net(x)
        patches = net.vit.patch_embed(net.embed(x).permute(0, 3, 1, 2))
    e = 1 + registers
    first = seen[0]
    assert first.shape == (2, e + N + 16, 16)
    assert torch.equal(first[:, 0], (net.vit.cls_token + net.vit.pos_embed[:, 0]).expand(2, -1, -1)[:, 0])
    assert torch.equal(first[:, e : e + N], net.prompt_embeddings.detach().expand(2, -1, -1))  # as they are: no position
    torch.testing.assert_close(first[:, e + N :], patches + net.vit.pos_embed[:, e:])
    # shallow: the prompt outputs of block 0 go on into block 1
    assert not torch.equal(seen[1][:, e : e + N], first[:, e : e + N])


def test_deep_prompts_replace_tokens_1_to_n_before_every_block():
    net = model(deep=True).eval()
    seen = block_inputs(net)
    with torch.no_grad():
        net(ids())
    assert len(seen) == 3 and all(s.shape == (2, 1 + N + 16, 16) for s in seen)
    sets = [net.prompt_embeddings[0]] + list(net.deep_prompt_embeddings)
    for i, s in enumerate(seen):
        assert torch.equal(s[:, 1 : 1 + N], sets[i].detach().expand(2, -1, -1)), i


@pytest.mark.parametrize("deep", [False, True])
def test_subsets_with_positions_carry_the_prompts(deep):
    net = model(deep=deep).eval()
    seen = block_inputs(net)
    x, pos = ids(), torch.tensor([[1, 4, 8, 13], [0, 2, 3, 15]])
    with torch.no_grad():
        tokens = net.forward_tokens(x.flatten(1).gather(1, pos), pos)
        assert tokens.shape == (2, 1 + N + 4, 16)
        assert torch.equal(seen[0][:, 1 : 1 + N], net.prompt_embeddings.expand(2, -1, -1))
        if deep:
            assert torch.equal(seen[2][:, 1 : 1 + N], net.deep_prompt_embeddings[1].expand(2, -1, -1))
        whole = net(x.flatten(1), torch.arange(16).expand(2, -1))  # every position in order: the full grid's logits
        torch.testing.assert_close(whole, net(x), atol=1e-5, rtol=1e-5)
    net(x.flatten(1).gather(1, pos), pos).sum().backward()  # the prompts are in the subset's sequence: they get gradients
    assert net.prompt_embeddings.grad.abs().sum() > 0
    assert not deep or net.deep_prompt_embeddings.grad[1].abs().sum() > 0


# --- training mode ---------------------------------------------------------------------------------------------


def test_the_backbone_stays_in_eval_mode_and_dropout_acts_only_in_training():
    net = model(deep=True, dropout=0.5, drop_path=0.5)
    net.train()
    assert net.training and net.prompt_dropout.training
    assert not net.vit.training and not any(m.training for m in net.vit.modules())
    x = ids()
    with torch.no_grad():
        a, b = net(x), net(x)
        assert not torch.equal(a, b)  # prompt dropout draws
        net.eval()
        assert torch.equal(net(x), net(x))
    quiet = model(deep=True, drop_path=0.5)  # no prompt dropout: training forwards are evaluation forwards
    with torch.no_grad():
        assert torch.equal(quiet.train()(x), quiet.eval()(x))
    assert net.train(False) is net and not net.training


def test_prompt_dropout_zeroes_prompt_entries_only():
    net = model(dropout=0.5).train()
    seen = block_inputs(net)
    with torch.no_grad():
        net(ids(8))
    prompts = seen[0][:, 1 : 1 + N]
    kept = prompts != 0
    assert 0.3 < kept.float().mean() < 0.7  # about half dropped, each sample its own mask
    torch.testing.assert_close(prompts[kept], (2 * net.prompt_embeddings.expand(8, -1, -1))[kept])
    assert (seen[0][:, 1 + N :] != 0).all()  # grid tokens untouched


@pytest.mark.parametrize("kind", ["full", "subset"])
def test_activation_checkpointing_gives_the_same_gradients_with_deep_prompts(kind):
    x, y, pos = ids(3), torch.tensor([0, 1, 2]), torch.tensor([[0, 3, 5, 6, 9, 11, 12, 15]] * 3)
    grads, losses = [], []
    for checkpointing in (False, True):
        net = model(deep=True, dropout=0.25).train()
        net.vit.set_grad_checkpointing(checkpointing)
        torch.manual_seed(7)  # the same prompt dropout draws
        logits = net(x) if kind == "full" else net(x.flatten(1).gather(1, pos), pos)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        losses.append(loss.item())
        grads.append({k: p.grad for k, p in net.named_parameters() if p.grad is not None})
    assert losses[0] == losses[1] and grads[0].keys() == grads[1].keys()
    assert set(grads[0]) == {"prompt_embeddings", "deep_prompt_embeddings", "vit.head.weight", "vit.head.bias"}
    assert all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])
    assert grads[0]["deep_prompt_embeddings"].abs().sum() > 0  # the deep sets are used, also when recomputed


def test_the_same_seed_gives_the_same_model_and_outputs():
    a, b = model(deep=True, dropout=0.3).train(), model(deep=True, dropout=0.3).train()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    torch.manual_seed(3)
    first = a(ids())
    torch.manual_seed(3)
    assert torch.equal(first, b(ids()))
    assert not torch.equal(model(seed=1).prompt_embeddings, a.prompt_embeddings)


def test_token_expansion_keeps_deep_prompts_in_place():
    net = model(deep=True).train()
    net.set_expansion(ExpansionConfig(steps=(0,), keep=(0.5,), after=0))
    seen = block_inputs(net)
    net(ids())
    assert [s.shape[1] for s in seen] == [1 + N + 16, 1 + N + 8, 1 + N + 8]
    assert torch.equal(seen[2][:, 1 : 1 + N], net.deep_prompt_embeddings[1].detach().expand(2, -1, -1))


def test_routed_attention_masks_count_the_prompts():
    net = model(deep=True, attention="routed", orders=(0, 1)).eval()
    assert net.grid_spans.shape == (1, 2, 1 + N + 16, 1 + N + 16)
    pos = torch.tensor([[1, 4, 8, 13]] * 2)
    with torch.no_grad():
        assert net(ids().flatten(1).gather(1, pos), pos).shape == (2, 5)


# --- attribution ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", ["rollout", "chefer", "gradcam", "atman"])
def test_token_scores_cover_exactly_the_grid_tokens(scorer):
    from tokenforge.continual.scorers import token_scores

    net = model(deep=True).eval()
    units, labels = ids(3).numpy(), np.array([0, 1, 2])
    scores = token_scores(net, units, labels, scorer, seed=0)
    assert scores.shape == (3, 16) and torch.isfinite(scores).all()
    if scorer == "rollout":  # by hand: the class token's row over the columns after the class token and the prompts
        with torch.no_grad(), net.probe(attention=True) as probe:
            net(torch.from_numpy(units))
        n = 1 + N + 16
        rollout = torch.eye(n).expand(3, n, n)
        for attn in probe.maps:
            a = attn.mean(1) + torch.eye(n)
            rollout = (a / a.sum(-1, keepdim=True)) @ rollout
        torch.testing.assert_close(scores, rollout[:, 0, 1 + N :])


# --- saving -------------------------------------------------------------------------------------------------------


def test_saved_with_the_backbones_digest_and_checked_on_load(tmp_path):
    net = model(deep=True, dropout=0.1).eval()
    save_model(net, tmp_path / "m")
    raw = json.loads((tmp_path / "m" / "model.json").read_text())
    assert (raw["prompt_tokens"], raw["prompt_deep"], raw["prompt_dropout"]) == (N, True, 0.1)
    assert raw["backbone_sha256"] == backbone_digest(net) == backbone_digest(model(tokens=0))  # the unprompted backbone's
    again = load_model(tmp_path / "m")
    assert torch.equal(again(ids()), net(ids())) and not again.training
    assert sorted(k for k, p in again.named_parameters() if p.requires_grad) == sorted(k for k, p in net.named_parameters() if p.requires_grad)
    with torch.no_grad():  # the prompts and head may change: the digest is the backbone's
        net.prompt_embeddings.add_(1)
        net.vit.head.bias.add_(1)
    assert backbone_digest(net) == raw["backbone_sha256"]
    with torch.no_grad():
        net.vit.blocks[0].attn.qkv.weight[0, 0] += 1e-6
    save_model(net, tmp_path / "changed")
    (tmp_path / "changed" / "model.json").write_text((tmp_path / "m" / "model.json").read_text())
    with pytest.raises(TokenforgeError, match="frozen backbone's digest differs from backbone_sha256"):
        load_model(tmp_path / "changed")


def test_an_unprompted_models_json_has_no_prompt_keys(tmp_path):
    save_model(model(tokens=0), tmp_path)
    raw = json.loads((tmp_path / "model.json").read_text())
    assert not any("prompt" in k or "backbone" in k for k in raw)


# --- fused attention ----------------------------------------------------------------------------------------------


def test_unfused_attention_computes_the_same_and_leaves_the_probe_alone():
    net = model(deep=True).eval()
    x = ids()
    with torch.no_grad():
        fused = net(x)
        with net.probe(attention=True) as probe:
            probed = net(x)
        maps = [m.clone() for m in probe.maps]
        net.set_fused_attention(False)
        assert not any(b.attn.fused_attn for b in net.vit.blocks)
        torch.testing.assert_close(net(x), fused, atol=1e-5, rtol=1e-5)
        with net.probe(attention=True) as probe:
            assert torch.equal(net(x), probed)  # the probe computes unfused maps either way
        assert all(torch.equal(a, b) for a, b in zip(maps, probe.maps))
        net.set_fused_attention(True)
        assert torch.equal(net(x), fused)
