"""Training with token expansion (train.token_expansion, `--toe-*`): a two-task chain with replay, bit-for-bit
repeatable; stages follow the epochs of each task, also after a resume; off means today's model, byte for byte."""

import pytest

from helpers.training import token_task_data, two_task_chain

from tokenforge.cli import main

pytestmark = pytest.mark.slow
TOE = ["--toe-enabled", "--toe-steps", "0", "1", "2", "--toe-keep", "0.5", "0.75", "1.0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 learnable classes of 4x4 grids, 40 a class (80 a task: 5 steps an epoch), 2 tasks."""
    return token_task_data(tmp_path_factory.mktemp("toe"), per_class=40, learnable=True)


def train(data, out, task, *extra):
    args = ["train", "--tokens", str(data / "train.parquet"), "--tokenizer", str(data / "tokenizer")]
    args += ["--split", str(data / "split"), "--task", str(task), "--out", str(out), "--epochs", "3"]
    args += ["--embed-dim", "16", "--depth", "2", "--batch-size", "16", "--memory-budget", "none",
             "--memory-samples-per-class", "3", "--threads", "1", "-q"]  # 1 thread: 20x faster on a busy CPU
    return main(args + list(extra))


def chain(data, root, *extra) -> None:
    two_task_chain(train, data, root, *extra)


def read(path):
    return path.read_bytes()


@pytest.fixture
def thinned(monkeypatch):
    """Record (stage, tokens in, tokens out) of every expansion the model runs."""
    from tokenforge.models import tokenvit as vit

    calls, expand = [], vit.expand

    def recording(x, positions, config, stage, prefix):
        y, pos = expand(x, positions, config, stage, prefix)
        calls.append((stage, x.shape[1], y.shape[1]))
        return y, pos

    monkeypatch.setattr(vit, "expand", recording)
    return calls


def test_a_two_task_chain_with_replay_trains_the_same_twice(data, tmp_path, thinned):
    chain(data, tmp_path / "a", *TOE)
    # 3 epochs of 5 steps per task: stage 0 (half of 16), stage 1 (3/4), stage 2 keeps all (no call). Task 1
    # replays 8-token memory samples and feeds input-dropped batches of 8 tokens: thinned to 4 and 6.
    assert {(s, n, k) for s, n, k in thinned} == {(0, 17, 9), (1, 17, 13), (0, 9, 5), (1, 9, 7)}
    assert sum(1 for s, n, _ in thinned if n == 9) == 2 * 5 * 2  # task 1: 2 stages x 5 steps x (input dropout + memory)
    chain(data, tmp_path / "b", *TOE)
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert read(tmp_path / "a" / "task-1" / name) == read(tmp_path / "b" / "task-1" / name)
    chain(data, tmp_path / "off")
    assert read(tmp_path / "a" / "task-1" / "model.safetensors") != read(tmp_path / "off" / "task-1" / "model.safetensors")


def test_off_is_todays_model_byte_for_byte(data, tmp_path, thinned):
    assert train(data, tmp_path / "plain", 0) == 0
    assert train(data, tmp_path / "off", 0, "--no-toe-enabled", "--toe-steps", "0", "--toe-keep", "0.5", "--toe-r0", "0.5") == 0
    assert not thinned
    for name in ("model.safetensors", "model.json", "memory.arrows.zst"):
        assert read(tmp_path / "plain" / name) == read(tmp_path / "off" / name)


def test_activation_checkpointing_with_expansion_gives_the_same_model(data, tmp_path):
    assert train(data, tmp_path / "plain", 0, *TOE) == 0
    assert train(data, tmp_path / "ckpt", 0, *TOE, "--activation-checkpointing") == 0
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert read(tmp_path / "plain" / name) == read(tmp_path / "ckpt" / name)


class Killed(Exception):
    """Stands in for a SIGKILL in the middle of training."""


@pytest.mark.parametrize("killed_at", [5, 7], ids=["stage-boundary", "mid-epoch"])
def test_a_resumed_run_is_in_the_stage_of_its_epoch(data, tmp_path, monkeypatch, killed_at):
    """Killed at the end of epoch 0 (the next epoch is stage 1) or inside epoch 1: the resume continues in stage 1
    and ends with the uninterrupted run's model."""
    from tokenforge.engine.loop import TrainLoop

    assert train(data, tmp_path / "ref", 0, *TOE) == 0
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "1"]
    step = TrainLoop.train_step

    def dies(loop, idx):
        if loop.state.step == killed_at:
            raise Killed
        step(loop, idx)

    with monkeypatch.context() as patch:
        patch.setattr(TrainLoop, "train_step", dies)
        with pytest.raises(Killed):
            train(data, tmp_path / "out", 0, *TOE, *ckpt)
    assert not (tmp_path / "out").exists() and (tmp_path / "ckpt" / "latest").read_text() == f"step{killed_at:09d}"
    assert train(data, tmp_path / "out", 0, *TOE, *ckpt) == 0
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert read(tmp_path / "ref" / name) == read(tmp_path / "out" / name)


def test_bad_settings_fail_before_training(data, tmp_path, capsys):
    assert train(data, tmp_path / "x", 0, "--toe-enabled", "--toe-steps", "0", "5", "--toe-keep", "0.5") == 2
    assert train(data, tmp_path / "y", 0, "--toe-enabled", "--depth", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "train.token_expansion.keep: one keep rate per stage" in err[0]
    assert "train.token_expansion.after: must be below the last block (0 for depth 1)" in err[1]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_flags_reach_the_model_only_for_training(data, tmp_path, monkeypatch):
    """The model under training has the schedule; the model that builds the memory does not."""
    from tokenforge.families.classification_job import ClassificationJob as job

    seen = {}
    build = job.build_memory

    def spy(self, model):
        seen["memory"] = model.expansion
        return build(self, model)

    monkeypatch.setattr(job, "build_memory", spy)
    make = job.make_loop

    def loop_spy(self):
        loop = make(self)
        seen["training"] = loop.engine.module.expansion
        return loop

    monkeypatch.setattr(job, "make_loop", loop_spy)
    assert train(data, tmp_path / "m", 0, *TOE, "--toe-r0", "0.5", "--toe-chunks", "3") == 0
    assert seen["memory"] is None
    assert (seen["training"].steps, seen["training"].keep, seen["training"].r0, seen["training"].chunks) == (
        (0, 1, 2), (0.5, 0.75, 1.0), 0.5, 3)
