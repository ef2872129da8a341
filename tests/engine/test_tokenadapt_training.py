"""Training with TokenAdapt (augment.tokenadapt_p, `tokenforge train --adapter`): a two-task chain with replay,
bit-for-bit repeatable and resumable after a kill; without an adapter, or with one made for another codebook, a
one-line error before training."""

import pytest
import torch

from helpers.training import token_task_data, two_task_chain

from tokenforge.cli import main
from tokenforge.tokenizer.adapt import AdapterConfig, TokenAdapter, save_adapter
from tokenforge.tokenizer.vq import load_codebook

pytestmark = pytest.mark.slow
AUGMENT = ["--augment-tokenadapt-p", "1.0", "--augment-crop-p", "0.5", "--augment-cutmix-p", "0.5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 learnable classes of 4x4 grids, 40 a class, 2 tasks; an (untrained, seeded) adapter for its codebook and one
    for another codebook."""
    root = token_task_data(tmp_path_factory.mktemp("tokenadapt"), per_class=40, learnable=True)
    codebook = load_codebook(root / "tokenizer")
    for name, book in (("adapter", codebook), ("other", torch.randn(16, 8, generator=torch.Generator().manual_seed(5)))):
        torch.manual_seed(0)
        (root / name).mkdir()
        save_adapter(TokenAdapter(AdapterConfig(16, 8, (4, 4), width=16, heads=2), book), root / name, {})
    return root


def train(data, out, task, *extra):
    args = ["train", "--tokens", str(data / "train.parquet"), "--tokenizer", str(data / "tokenizer")]
    args += ["--split", str(data / "split"), "--task", str(task), "--out", str(out), "--epochs", "2"]
    args += ["--embed-dim", "16", "--depth", "2", "--batch-size", "16", "--memory-budget", "none",
             "--memory-samples-per-class", "3", "--threads", "1", "-q"]
    return main(args + list(extra))


def read(path):
    return path.read_bytes()


def test_a_two_task_chain_with_replay_trains_the_same_twice(data, tmp_path, monkeypatch):
    from tokenforge.data.augment import TokenAugmenter

    calls = []
    tokenadapt = TokenAugmenter._tokenadapt

    def counting(self, ids, targets):
        calls.append(len(ids))
        return tokenadapt(self, ids, targets)

    monkeypatch.setattr(TokenAugmenter, "_tokenadapt", counting)
    flags = [*AUGMENT, "--adapter", str(data / "adapter")]
    two_task_chain(train, data, tmp_path / "a", *flags)
    assert len(calls) == 2 * 2 * 5 and set(calls) == {8}  # 2 tasks x 2 epochs x 5 steps, half of each batch of 16
    two_task_chain(train, data, tmp_path / "b", *flags)
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert read(tmp_path / "a" / "task-1" / name) == read(tmp_path / "b" / "task-1" / name)
    assert train(data, tmp_path / "off", 0, *AUGMENT[2:]) == 0
    assert read(tmp_path / "a" / "task-0" / "model.safetensors") != read(tmp_path / "off" / "model.safetensors")


class Killed(Exception):
    """Stands in for a SIGKILL in the middle of training."""


def test_a_killed_run_resumes_to_the_same_model(data, tmp_path, monkeypatch):
    from tokenforge.engine.loop import TrainLoop

    flags = [*AUGMENT, "--adapter", str(data / "adapter")]
    assert train(data, tmp_path / "ref", 0, *flags) == 0
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "1"]
    step = TrainLoop.train_step

    def dies(loop, idx):
        if loop.state.step == 7:  # mid-epoch 1: the augmenter's generator has moved on since the start
            raise Killed
        step(loop, idx)

    with monkeypatch.context() as patch:
        patch.setattr(TrainLoop, "train_step", dies)
        with pytest.raises(Killed):
            train(data, tmp_path / "out", 0, *flags, *ckpt)
    assert not (tmp_path / "out").exists() and (tmp_path / "ckpt" / "latest").read_text() == "step000000007"
    assert train(data, tmp_path / "out", 0, *flags, *ckpt) == 0
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert read(tmp_path / "ref" / name) == read(tmp_path / "out" / name)


def test_missing_or_foreign_adapter_is_a_one_line_error(data, tmp_path, capsys):
    assert train(data, tmp_path / "x", 0, *AUGMENT) == 2
    assert train(data, tmp_path / "y", 0, *AUGMENT, "--adapter", str(data / "other")) == 2
    assert train(data, tmp_path / "z", 0, *AUGMENT, "--adapter", str(tmp_path / "none")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("tokenforge train: error: ") for line in err)
    assert "--adapter: required when augment.tokenadapt_p > 0" in err[0]
    assert "--adapter: an adapter made for another codebook" in err[1]
    assert "none/config.json: no such file" in err[2]
    assert not any((tmp_path / d).exists() for d in "xyz")
