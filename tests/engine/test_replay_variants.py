"""Each replay variant trains a two-task chain: memory bytes on disk, determinism, the shortcut probe in stats.json,
the head reset, and the errors of combinations that cannot work."""

import json

import pytest
import torch

from helpers.training import token_task_data

from tokenforge.cli import main
from tokenforge.continual.memory import read_memory
from tokenforge.models.vit import load_model


VARIANTS = {
    "subset": [],
    "fill-frequent": ["--memory-view", "fill", "--memory-fill", "frequent"],
    "fill-mask": ["--memory-view", "fill", "--memory-fill", "mask"],
    "token-dropout": ["--input-dropout-mode", "token", "--input-dropout", "0.75"],
    "paper": ["--memory-view", "fill", "--input-dropout-mode", "token", "--input-dropout", "0.75",
              "--memory-schedule", "epoch", "--head", "reset"],
}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tokenizer, a token set with 4 classes whose grids differ, a 2-task split."""
    return token_task_data(tmp_path_factory.mktemp("variants"), per_class=40)


def train(data, out, task, *extra):
    args = ["train", "--tokens", str(data / "train.parquet"), "--tokenizer", str(data / "tokenizer")]
    args += ["--split", str(data / "split"), "--task", str(task), "--out", str(out), "--epochs", "2"]
    args += ["--embed-dim", "16", "--depth", "1", "--batch-size", "16", "--memory-budget", "none",
             "--memory-samples-per-class", "4", "--memory-token-fraction", "0.25", "-q"]  # fmt: skip
    return main(args + list(extra))


def chain(data, out, flags):
    assert train(data, out / "t0", 0, *flags) == 0
    assert train(data, out / "t1", 1, "--previous", str(out / "t0"), *flags) == 0
    return out / "t1"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_trains_a_chain_deterministically(data, tmp_path, variant):
    first = chain(data, tmp_path / "a", VARIANTS[variant])
    again = chain(data, tmp_path / "b", VARIANTS[variant])
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    memory = read_memory(first / "memory.arrows.zst")
    assert memory.ids.shape == (16, 4)  # 4 classes x 4 samples, a quarter of the 16 tokens: the view is not stored
    stats = json.loads((first / "stats.json").read_text())
    assert stats["memory_bytes"] == (first / "memory.arrows.zst").stat().st_size
    assert 0.0 <= stats["shortcut_auc"] <= 1.0
    assert load_model(first).config.mask_token == (variant == "fill-mask")


def test_the_view_changes_training_but_not_what_is_stored(data, tmp_path):
    subset = chain(data, tmp_path / "subset", VARIANTS["subset"])
    fill = chain(data, tmp_path / "fill", VARIANTS["fill-frequent"])
    # task 0 replays nothing and batch dropout waits for task 1: the same model and memory bytes
    assert (tmp_path / "subset/t0/memory.arrows.zst").read_bytes() == (tmp_path / "fill/t0/memory.arrows.zst").read_bytes()
    assert (subset / "model.safetensors").read_bytes() != (fill / "model.safetensors").read_bytes()


def test_head_reset_starts_task_1_from_a_fresh_head(data, tmp_path):
    from tokenforge.families.vit_start import reset_head

    assert train(data, tmp_path / "t0", 0) == 0
    model = load_model(tmp_path / "t0")
    before = model.vit.head.weight.clone()
    reset_head(model)
    assert not torch.equal(before, model.vit.head.weight)
    assert model.vit.head.bias.abs().sum() == 0 and model.vit.head.weight.std() < 0.05
    for head in ("keep", "reset"):
        assert train(data, tmp_path / head, 1, "--previous", str(tmp_path / "t0"), "--head", head) == 0
    keep, reset = (load_model(tmp_path / h).vit.head.weight for h in ("keep", "reset"))
    assert not torch.equal(keep, reset)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--input-dropout-mode", "token", "--input-dropout", "1"], "train.input_dropout: token mode"),
        (["--memory-view", "fill", "--memory-fill", "mean"], "memory.fill: mean is for input pixels"),
        (["--memory-view", "fill", "--augment-flip-p", "0.5"], "memory.view: fill does not combine"),
    ],
)
def test_combinations_that_cannot_work_fail_with_one_line(data, tmp_path, capsys, flags, message):
    assert train(data, tmp_path / "out", 0, *flags) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_mask_fill_needs_a_mask_token_from_task_0(data, tmp_path, capsys):
    assert train(data, tmp_path / "t0", 0) == 0
    assert train(data, tmp_path / "t1", 1, "--previous", str(tmp_path / "t0"), *VARIANTS["fill-mask"]) != 0
    assert "a model without a mask token" in capsys.readouterr().err
