"""Training with routed attention spans (`--attention routed`, `--orders`, `--routing`): a two-task chain with replay
of subsets, bit-for-bit repeatable, with token expansion and activation checkpointing; hard routing's temperature
follows the steps, also after a resume; global attention is today's model, byte for byte."""

import json

import pytest
import torch

from helpers.training import token_task_data, two_task_chain

from tokenforge.cli import main

pytestmark = pytest.mark.slow
ROUTED = ["--attention", "routed", "--orders", "0", "1", "2"]
TOE = ["--toe-enabled", "--toe-steps", "0", "1", "--toe-keep", "0.5", "1.0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 learnable classes of 4x4 grids, 24 a class (48 a task: 3 steps an epoch), 2 tasks."""
    return token_task_data(tmp_path_factory.mktemp("routed"), per_class=24, learnable=True)


def train(data, out, task, *extra):
    args = ["train", "--tokens", str(data / "train.parquet"), "--tokenizer", str(data / "tokenizer")]
    args += ["--split", str(data / "split"), "--task", str(task), "--out", str(out), "--epochs", "2"]
    args += ["--embed-dim", "16", "--depth", "2", "--batch-size", "16", "--memory-budget", "none",
             "--memory-samples-per-class", "3", "--memory-token-fraction", "0.5", "--threads", "1", "-q"]
    return main(args + list(extra))


def chain(data, root, *extra) -> None:
    two_task_chain(train, data, root, *extra)


def read(path):
    return path.read_bytes()


def test_a_two_task_chain_with_replay_trains_the_same_twice(data, tmp_path):
    """Soft routing; the memory scored by Chefer relevance through the routed attention, replayed as subsets."""
    extra = [*ROUTED, "--memory-scorer", "chefer"]
    chain(data, tmp_path / "a", *extra)
    chain(data, tmp_path / "b", *extra)
    for name in ("model.safetensors", "model.json", "memory.arrows.zst"):
        assert read(tmp_path / "a" / "task-1" / name) == read(tmp_path / "b" / "task-1" / name)
    config = json.loads((tmp_path / "a" / "task-1" / "model.json").read_text())  # task 1 inherits task 0's attention
    assert (config["attention"], config["orders"], config["routing"]) == ("routed", [0, 1, 2], "soft")
    stats = json.loads((tmp_path / "a" / "task-1" / "stats.json").read_text())
    assert stats["memory_samples"] == 12 and stats["memory_tokens_per_sample"] == 8


def test_hard_routing_with_expansion_and_checkpointing_gives_the_same_chain(data, tmp_path, monkeypatch):
    """Token expansion thins routed sequences (task 1: replayed subsets too); activation checkpointing recomputes
    the blocks with the same gumbel noise: the same bits."""
    from tokenforge.models import tokenvit as vit

    thinned, expand = set(), vit.expand

    def recording(x, positions, *args):
        y, pos = expand(x, positions, *args)
        thinned.add((x.shape[1], y.shape[1]))
        return y, pos

    monkeypatch.setattr(vit, "expand", recording)
    extra = [*ROUTED, "--routing", "hard", *TOE]
    chain(data, tmp_path / "plain", *extra)
    assert thinned == {(17, 9), (9, 5)}  # epoch 0 of each task: full grids, and task 1's 8-token subsets
    chain(data, tmp_path / "ckpt", *extra, "--activation-checkpointing")
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert read(tmp_path / "plain" / "task-1" / name) == read(tmp_path / "ckpt" / "task-1" / name)


def test_global_attention_is_todays_model_byte_for_byte(data, tmp_path):
    assert train(data, tmp_path / "plain", 0) == 0
    assert train(data, tmp_path / "global", 0, "--attention", "global", "--orders", "1", "--routing", "hard") == 0
    for name in ("model.safetensors", "model.json", "memory.arrows.zst"):
        assert read(tmp_path / "plain" / name) == read(tmp_path / "global" / name)
    assert "attention" not in json.loads((tmp_path / "plain" / "model.json").read_text())


class Killed(Exception):
    """Stands in for a SIGKILL in the middle of training."""


def test_hard_routing_resumes_exactly_with_the_temperature_of_its_step(data, tmp_path, monkeypatch):
    from tokenforge.engine.loop import TrainLoop
    from tokenforge.models.vit import TokenViT

    temperatures = []
    set_progress = TokenViT.set_progress

    def spy(model, fraction):
        set_progress(model, fraction)
        temperatures.append(model.vit.blocks[0].attn.router.temperature)

    monkeypatch.setattr(TokenViT, "set_progress", spy)
    hard = [*ROUTED, "--routing", "hard"]
    assert train(data, tmp_path / "ref", 0, *hard) == 0
    # 2 epochs x 3 steps: 10 at the first step, 0.1 at the last, linear in between
    assert temperatures == pytest.approx([10.0 - 9.9 * i / 5 for i in range(6)])
    temperatures.clear()
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "1"]
    step = TrainLoop.train_step

    def dies(loop, idx):
        if loop.state.step == 4:
            raise Killed
        step(loop, idx)

    with monkeypatch.context() as patch:
        patch.setattr(TrainLoop, "train_step", dies)
        with pytest.raises(Killed):
            train(data, tmp_path / "out", 0, *hard, *ckpt)
    temperatures.clear()
    assert train(data, tmp_path / "out", 0, *hard, *ckpt) == 0
    assert temperatures == pytest.approx([10.0 - 9.9 * i / 5 for i in (4, 5)])  # resumed at step 4 of 6
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert read(tmp_path / "ref" / name) == read(tmp_path / "out" / name)


def test_bad_orders_fail_before_training(data, tmp_path, capsys):
    assert train(data, tmp_path / "x", 0, "--attention", "routed", "--orders", "1", "1") == 2
    assert "train.orders: distinct whole numbers >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_pretrained_global_start_becomes_routed_with_fresh_routers():
    """--init with --attention routed: the pretrained weights load into everything but the new routers."""
    from argparse import Namespace

    from tokenforge.models.options.routed import ROUTED_ATTENTION
    from tokenforge.models.vit import ModelConfig, TokenViT

    torch.manual_seed(0)
    pretrained = TokenViT(ModelConfig(grid=(4, 4), codebook_size=16, code_dim=8, num_classes=4, embed_dim=16, depth=2),
                          torch.randn(16, 8))
    args = Namespace(attention="routed", orders=[0, 1], routing="hard", init="pretrain/", prompt_tokens=0)
    model = ROUTED_ATTENTION.start(pretrained, args)
    assert (model.config.attention, model.config.orders, model.config.routing) == ("routed", (0, 1), "hard")
    state, before = model.state_dict(), pretrained.state_dict()
    assert {k for k in state if k not in before} == {f"vit.blocks.{i}.attn.router.{p}" for i in range(2)
                                                     for p in ("fc1.weight", "fc2.weight", "fc2.bias")}
    assert all(torch.equal(state[k], v) for k, v in before.items())
    assert ROUTED_ATTENTION.start(pretrained, Namespace(attention="global", orders=[0], routing="soft", init="x")) is pretrained
