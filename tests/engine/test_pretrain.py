"""The pretrain stage on tiny data: each mode's outputs, task 0 starting from them, the MTM fill of replay, and the
one-line errors of settings that cannot work."""

import json

import numpy as np
import pytest
import torch
from helpers.training import token_task_data

from tokenforge.cli import main
from tokenforge.continual.replay import fill_grid
from tokenforge.engine.pretrain import init_from
from tokenforge.models.mtm import HEAD_FILE, MTMFiller, mask_grids, mask_ratio
from tokenforge.models.vit import load_model
from tokenforge.tokenizer.vq import build_model, load_codebook, make_config, save_tokenizer

pytestmark = pytest.mark.slow

ARCH = ["--embed-dim", "16", "--depth", "1", "--num-heads", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 classes, tasks (0, 1) and (2, 3): classes 4 and 5 are held out of the sequence."""
    return token_task_data(tmp_path_factory.mktemp("pretrain"), per_class=40, classes=6, learnable=True)


def pretrain(data, out, mode, *extra):
    args = ["pretrain", "--mode", mode, "--tokens", str(data / "train.parquet"), "--split", str(data / "split"),
            "--tokenizer", str(data / "tokenizer"), "--out", str(out), "--epochs", "3", "--batch-size", "16", *ARCH]
    return main(args + list(extra) + ["-q"])


def train(data, out, task, *extra):
    args = ["train", "--tokens", str(data / "train.parquet"), "--tokenizer", str(data / "tokenizer"),
            "--split", str(data / "split"), "--task", str(task), "--out", str(out), "--epochs", "2",
            "--embed-dim", "32", "--depth", "2", "--batch-size", "16", "--memory-budget", "none",
            "--memory-samples-per-class", "4", "--memory-token-fraction", "0.25", "-q"]  # fmt: skip
    return main(args + list(extra))


@pytest.fixture(scope="module")
def supervised(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sup") / "pretrain"
    assert pretrain(data, out, "supervised", "--data", "heldout", "--epochs", "20") == 0
    return out


@pytest.fixture(scope="module")
def mtm(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mtm") / "pretrain"
    assert pretrain(data, out, "mtm", "--data", "tasks", "--epochs", "6") == 0
    return out


def test_supervised_on_held_out_classes_learns_them(supervised):
    stats = json.loads((supervised / "stats.json").read_text())
    assert stats["mode"] == "supervised" and stats["classes"] == 2 and stats["samples"] == 80
    assert "[4, 5]" in stats["data"]
    # classes 4 and 5 differ in token (0, 0): 20 epochs learn them (chance 0.5)
    assert stats["final_accuracy"] > 0.8
    assert load_model(supervised).config.num_classes == 2


def test_pretraining_is_deterministic(data, supervised, tmp_path):
    assert pretrain(data, tmp_path / "again", "supervised", "--data", "heldout", "--epochs", "20") == 0
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (supervised / "model.safetensors").read_bytes()


def test_task_0_starts_from_the_backbone_with_a_fresh_head(data, supervised):
    codebook = load_codebook(data / "tokenizer")
    torch.manual_seed(1)
    model = init_from(supervised, num_classes=6, mask_token=False, codebook=codebook, input="tokens")
    pretrained = load_model(supervised)
    assert model.config.embed_dim == 16 and model.config.num_classes == 6 and model.vit.head.out_features == 6
    for name, value in pretrained.state_dict().items():
        if not name.startswith("vit.head."):
            assert torch.equal(model.state_dict()[name], value), name


def test_train_with_init_takes_the_pretrained_architecture_and_chains(data, supervised, tmp_path):
    assert train(data, tmp_path / "t0", 0, "--init", str(supervised)) == 0
    assert train(data, tmp_path / "t1", 1, "--previous", str(tmp_path / "t0"), "--init", str(supervised)) == 0
    config = load_model(tmp_path / "t1").config
    assert (config.embed_dim, config.depth, config.num_classes) == (16, 1, 6)  # not --embed-dim 32 --depth 2


def test_mtm_beats_the_frequent_code_and_saves_its_predictor(mtm):
    stats = json.loads((mtm / "stats.json").read_text())
    assert stats["mode"] == "mtm" and (mtm / HEAD_FILE).is_file()
    assert load_model(mtm).config.mask_token
    # random codes apart from the class token: no code is right much more than 1/16 of the time, the model
    # learns at least the code distribution
    assert 0 < stats["final_fill_accuracy"] and 0 <= stats["frequent_code_accuracy"] < 0.2


def test_the_mtm_filler_keeps_kept_tokens_and_fills_every_other(mtm, data):
    filler = MTMFiller(mtm)
    ids = torch.randint(0, 16, (5, 2))
    positions = torch.stack([torch.randperm(16)[:2].sort().values for _ in range(5)])
    grids = fill_grid(ids, positions, (4, 4), torch.tensor(filler.mask_id))
    filled = filler(grids)
    assert filled.shape == (5, 4, 4) and int(filled.max()) < 16
    assert torch.equal(filled.flatten(1).gather(1, positions), ids)
    assert torch.equal(filler(grids), filled)  # argmax: deterministic


def test_mask_ratio_and_masks_are_reproducible():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ratios = [mask_ratio(g1) for _ in range(200)]
    assert ratios == [mask_ratio(g2) for _ in range(200)]
    assert all(0.4 <= r <= 1.0 for r in ratios) and 0.5 < np.mean(ratios) < 0.7  # truncation lifts the mean of 0.45
    masked, mask = mask_grids(torch.zeros(4, 4, 4, dtype=torch.long), 0.5, 16, torch.Generator().manual_seed(0))
    assert mask.flatten(1).sum(1).tolist() == [8] * 4 and torch.equal(masked == 16, mask)


def test_replay_with_the_mtm_fill_trains_a_chain_deterministically(data, mtm, tmp_path):
    flags = ["--memory-view", "fill", "--memory-fill", "mtm", "--fill-model", str(mtm), "--init", str(mtm)]
    for run in ("a", "b"):
        assert train(data, tmp_path / run / "t0", 0, *flags) == 0
        assert train(data, tmp_path / run / "t1", 1, "--previous", str(tmp_path / run / "t0"), *flags) == 0
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert (tmp_path / "a" / "t1" / name).read_bytes() == (tmp_path / "b" / "t1" / name).read_bytes()
    stats = json.loads((tmp_path / "a" / "t1" / "stats.json").read_text())
    assert 0 <= stats["shortcut_auc"] <= 1 and stats["memory_samples"] == 16
    assert not load_model(tmp_path / "a" / "t1").config.mask_token  # the filler's mask embedding is not the model's


def test_supervised_from_another_source_encoded_by_the_run_tokenizer(data, tmp_path):
    assert pretrain(data, tmp_path / "p", "supervised", "--data", "shapes", "--max-per-class", "3", "--epochs", "1") == 0
    stats = json.loads((tmp_path / "p" / "stats.json").read_text())
    assert stats["data"].startswith("shapes") and stats["samples"] == 30 and stats["classes"] == 10
    assert load_model(tmp_path / "p").config.grid == (4, 4)


@pytest.mark.parametrize(
    "mode, extra, message",
    [
        ("supervised", ["--data", "tasks"], "pretrain.data"),
        ("mtm", ["--input", "pixels"], "pretrain.mode"),
        ("timm", ["--input", "pixels"], "pretrain.timm_model"),
        ("timm", [], "pretrain.mode"),
        ("supervised", ["--data", "nosuchsource"], "nosuchsource"),
        ("supervised", ["--data", "heldout", "--split", "FULL"], "tasks.json"),
    ],
)
def test_settings_that_cannot_work_fail_in_one_line(data, tmp_path, capsys, mode, extra, message):
    if "FULL" in extra:  # a split with every class in a task: nothing is held out
        full = tmp_path / "full"
        full.mkdir()
        tasks = [{"task": 0, "classes": [0, 1, 2], "class_names": list("abc")}, {"task": 1, "classes": [3, 4, 5], "class_names": list("def")}]
        (full / "tasks.json").write_text(json.dumps({"num_classes": 6, "tasks": tasks}))
        extra = [e if e != "FULL" else str(full) for e in extra]
    assert pretrain(data, tmp_path / "out", mode, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_train_errors_for_the_mtm_fill_and_a_foreign_init(data, mtm, tmp_path, capsys):
    assert train(data, tmp_path / "a", 0, "--memory-view", "fill", "--memory-fill", "mtm") == 2
    assert "--fill-model" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(5)
    save_tokenizer(build_model(make_config((8, 8), 1, 2, 16, 8, 8, 0)), other)  # same shapes, other codebook
    assert train(data, tmp_path / "b", 0, "--tokenizer", str(other), "--init", str(mtm)) == 2
    assert "another tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_timm_weights_start_a_pixel_model_on_the_run_grid(tmp_path):
    """A small timm ViT's weights saved locally, mapped onto the pixel grid, then task 0 trains from them."""
    import timm
    from safetensors.torch import save_file

    kwargs = {"img_size": 8, "patch_size": 2, "in_chans": 3, "depth": 1, "embed_dim": 16, "num_heads": 2}
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kwargs)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    shards = tmp_path / "shard"
    assert main(["shard", "--source", "shapes", "--shapes-count", "40", "--shapes-classes", "2",
                 "--shapes-size", "8", "--out", str(shards), "-q"]) == 0
    (tmp_path / "tokenizer").mkdir()
    save_tokenizer(build_model(make_config((8, 8), 3, 2, 16, 8, 8, 0)), tmp_path / "tokenizer")
    (tmp_path / "split").mkdir()
    tasks = [{"task": 0, "classes": [0, 1], "class_names": ["a", "b"]}]
    (tmp_path / "split" / "tasks.json").write_text(json.dumps({"num_classes": 2, "tasks": tasks}))
    assert main(["pretrain", "--mode", "timm", "--input", "pixels", "--timm-model", "vit_tiny_patch16_224",
                 "--timm-checkpoint", str(tmp_path / "vit.safetensors"), "--timm-kwargs", json.dumps(kwargs),
                 "--tokenizer", str(tmp_path / "tokenizer"), "--out", str(tmp_path / "pretrain"), "-q"]) == 0
    pretrained = load_model(tmp_path / "pretrain")
    assert pretrained.config.input == "pixels" and pretrained.config.grid == (4, 4) and pretrained.config.embed_dim == 16
    assert torch.equal(pretrained.vit.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    assert main(["train", "--input", "pixels", "--shards", str(shards), "--tokenizer", str(tmp_path / "tokenizer"),
                 "--split", str(tmp_path / "split"), "--task", "0", "--out", str(tmp_path / "t0"), "--epochs", "1",
                 "--init", str(tmp_path / "pretrain"), "--memory-budget", "3000", "-q"]) == 0
    assert load_model(tmp_path / "t0").config.embed_dim == 16
