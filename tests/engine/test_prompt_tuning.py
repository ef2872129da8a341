"""Training with visual prompt tuning (train.prompts, `--prompt-*`): task 0 tunes prompts and a head on the pretrain
stage's backbone (`--init`), task 1 continues them with replay; the backbone stays bit for bit the pretrained one and
its digest is in model.json; bit-for-bit repeatable, also after a kill and resume and with activation checkpointing;
prompts without a backbone fail in one line; off means today's model, byte for byte."""

import json

import pytest
import torch

from helpers.training import token_task_data, two_task_chain

from tokenforge.cli import main
from tokenforge.models.store import backbone_digest, is_tuned
from tokenforge.models.vit import load_model

pytestmark = pytest.mark.slow
DEEP = ["--prompt-tokens", "2", "--prompt-deep", "--prompt-dropout", "0.1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 learnable classes of 4x4 grids, 24 a class (48 a task: 3 steps an epoch), tasks (0, 1) and (2, 3): 4 and 5
    are held out for the pretrain stage."""
    return token_task_data(tmp_path_factory.mktemp("vpt"), per_class=24, classes=6, learnable=True)


@pytest.fixture(scope="module")
def backbone(data):
    """A supervised backbone on the held-out classes (`tokenforge pretrain`), the --init of task 0."""
    out = data / "pretrain"
    assert main(["pretrain", "--mode", "supervised", "--data", "heldout", "--tokens", str(data / "train.parquet"),
                 "--split", str(data / "split"), "--tokenizer", str(data / "tokenizer"), "--out", str(out), "--epochs", "3",
                 "--batch-size", "16", "--embed-dim", "16", "--depth", "3", "--threads", "1", "-q"]) == 0
    return out


def train(data, out, task, *extra):
    args = ["train", "--tokens", str(data / "train.parquet"), "--tokenizer", str(data / "tokenizer")]
    args += ["--split", str(data / "split"), "--task", str(task), "--out", str(out), "--epochs", "2", "--lr", "0.01"]
    args += ["--batch-size", "16", "--memory-budget", "none", "--memory-samples-per-class", "3", "--threads", "1", "-q"]
    return main(args + list(extra))


def read(path):
    return path.read_bytes()


def test_a_two_task_chain_with_replay_trains_the_same_twice_on_the_untouched_backbone(data, backbone, tmp_path):
    init = ["--init", str(backbone)]  # task 1 ignores it: it starts from task 0's model
    two_task_chain(train, data, tmp_path / "a", *init, *DEEP)
    two_task_chain(train, data, tmp_path / "b", *init, *DEEP)
    for name in ("model.safetensors", "model.json", "memory.arrows.zst"):
        assert read(tmp_path / "a" / "task-1" / name) == read(tmp_path / "b" / "task-1" / name)
    pretrained = load_model(backbone).state_dict()
    models = [load_model(tmp_path / "a" / f"task-{t}") for t in (0, 1)]
    states = [m.state_dict() for m in models]
    frozen = [k for k in states[0] if not is_tuned(k)]
    assert frozen and all(torch.equal(s[k], pretrained[k]) for s in states for k in frozen)  # bit for bit the backbone's
    digests = {json.loads(read(tmp_path / "a" / f"task-{t}" / "model.json"))["backbone_sha256"] for t in (0, 1)}
    assert digests == {backbone_digest(load_model(backbone))}  # the pretrain output's own digest (its head aside)
    for key in ("prompt_embeddings", "deep_prompt_embeddings", "vit.head.weight"):  # task 1 went on tuning them
        assert not torch.equal(states[0][key], states[1][key])
    assert models[1].config.prompt_deep and models[1].config.prompt_tokens == 2 and models[1].config.num_classes == 6
    stats = json.loads(read(tmp_path / "a" / "task-1" / "stats.json"))
    assert stats["memory_samples"] == 12 and stats["steps"] == 2 * 3


def test_activation_checkpointing_and_shallow_prompts(data, backbone, tmp_path):
    init = ["--init", str(backbone)]
    assert train(data, tmp_path / "plain", 0, *init, *DEEP) == 0
    assert train(data, tmp_path / "ckpt", 0, *init, *DEEP, "--activation-checkpointing") == 0
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert read(tmp_path / "plain" / name) == read(tmp_path / "ckpt" / name)
    assert train(data, tmp_path / "shallow", 0, *init, "--prompt-tokens", "2") == 0
    shallow = load_model(tmp_path / "shallow")
    assert not shallow.config.prompt_deep and "deep_prompt_embeddings" not in shallow.state_dict()


class Killed(Exception):
    """Stands in for a SIGKILL in the middle of training."""


def test_a_killed_task_1_resumes_to_the_uninterrupted_model(data, backbone, tmp_path, monkeypatch):
    from tokenforge.engine.loop import TrainLoop

    assert train(data, tmp_path / "task-0", 0, "--init", str(backbone), *DEEP) == 0
    previous = ["--previous", str(tmp_path / "task-0")]
    assert train(data, tmp_path / "ref", 1, *previous, *DEEP) == 0
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "1"]
    step = TrainLoop.train_step

    def dies(loop, idx):
        if loop.state.step == 4:  # inside epoch 1 (3 steps an epoch)
            raise Killed
        step(loop, idx)

    with monkeypatch.context() as patch:
        patch.setattr(TrainLoop, "train_step", dies)
        with pytest.raises(Killed):
            train(data, tmp_path / "out", 1, *previous, *DEEP, *ckpt)
    assert not (tmp_path / "out").exists() and (tmp_path / "ckpt" / "latest").read_text() == "step000000004"
    assert train(data, tmp_path / "out", 1, *previous, *DEEP, *ckpt) == 0
    for name in ("model.safetensors", "model.json", "memory.arrows.zst"):
        assert read(tmp_path / "ref" / name) == read(tmp_path / "out" / name)


def test_prompts_without_a_backbone_or_other_prompts_than_task_0s_fail_in_one_line(data, backbone, tmp_path, capsys):
    assert train(data, tmp_path / "x", 0, *DEEP) == 2
    assert train(data, tmp_path / "task-0", 0, "--init", str(backbone), *DEEP) == 0
    capsys.readouterr()
    assert train(data, tmp_path / "y", 1, "--previous", str(tmp_path / "task-0"), "--prompt-tokens", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a model with 2 deep prompt tokens, the flags ask for 2 shallow prompt tokens" in err[0]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_prompts_without_init_is_a_one_line_error(data, tmp_path, capsys):
    assert train(data, tmp_path / "x", 0, "--prompt-tokens", "5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.prompts: prompt tuning trains prompts on a frozen backbone; task 0 needs one from --init" in err[0]


def test_off_is_todays_model_byte_for_byte(data, tmp_path):
    assert train(data, tmp_path / "plain", 0) == 0
    assert train(data, tmp_path / "off", 0, "--prompt-tokens", "0", "--prompt-deep", "--prompt-dropout", "0.5", "--fused-attention") == 0
    for name in ("model.safetensors", "model.json", "memory.arrows.zst"):
        assert read(tmp_path / "plain" / name) == read(tmp_path / "off" / name)


def test_unfused_attention_reaches_only_the_model_under_training(data, backbone, tmp_path, monkeypatch):
    from tokenforge.families.classification_job import ClassificationJob as job

    seen = {}
    build, make = job.build_memory, job.make_loop

    def spy(self, model):
        seen["memory"] = [b.attn.fused_attn for b in model.vit.blocks]
        return build(self, model)

    def loop_spy(self):
        loop = make(self)
        module = loop.engine.module
        seen["training"] = [b.attn.fused_attn for b in module.vit.blocks]
        seen["trainable"] = sum(p.numel() for group in loop.engine.optimizer.param_groups for p in group["params"])
        seen["expected"] = sum(p.numel() for k, p in module.named_parameters() if is_tuned(k))
        return loop

    monkeypatch.setattr(job, "build_memory", spy)
    monkeypatch.setattr(job, "make_loop", loop_spy)
    assert train(data, tmp_path / "m", 0, "--init", str(backbone), *DEEP, "--no-fused-attention") == 0
    assert seen["training"] == [False] * 3 and seen["memory"] == [True] * 3
    assert seen["trainable"] == seen["expected"] == 3 * 2 * 16 + 16 * 6 + 6  # depth 3: 3 sets of 2 x 16; head 16 -> 6 classes


def test_bf16_training_saves_the_fp32_backbone_bit_for_bit(data, backbone, tmp_path):
    """bf16 training holds only the backbone's rounding; the saved model has the backbone itself."""
    assert train(data, tmp_path / "bf16", 0, "--init", str(backbone), *DEEP, "--precision", "bf16") == 0
    pretrained, tuned = load_model(backbone).state_dict(), load_model(tmp_path / "bf16").state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in tuned.items() if not is_tuned(k))
    assert tuned["prompt_embeddings"].dtype == torch.float32
