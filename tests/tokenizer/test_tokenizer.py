"""The VQ tokenizer: training, pruning, encode/decode, save/load, codebook file, reconstruction grid, determinism,
and `tokenforge tokenizer`."""

import copy
import json
import pickle
import types

import numpy as np
import pytest
import torch

from tokenforge import cli
from tokenforge.cli import tokenizer as tokenizer_cli
from tokenforge.data import shards
from tokenforge.errors import TokenforgeError
from tokenforge.tokenizer import train as training
from tokenforge.tokenizer import vq as tokenizer

TINY = dict(downsample=2, codebook_size=16, code_dim=4, hidden_dim=8, seed=0)


def patterns(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 1): stripes, checkers and blocks at random brightness, easy to learn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    shapes = [(yy // 2) % 2, (xx // 2) % 2, (yy // 2 + xx // 2) % 2, (yy < size // 2).astype(int)]
    images = [shapes[rng.integers(len(shapes))] * rng.integers(128, 256) for _ in range(n)]
    return np.stack(images).astype(np.uint8)[..., None]


@pytest.fixture(scope="module")
def trained():
    config = tokenizer.make_config((8, 8), 1, **TINY)
    model, losses = training.train_tokenizer(patterns(64), config, epochs=3, batch_size=16, lr=5e-3)
    return model, losses


def fake_shards(monkeypatch, tmp_path, splits: dict) -> None:
    """Serve in-memory ImageSets through tokenforge.data.shards.sample_split (tested on its own in test_shard)."""

    def sample_split(shard_dir, split, max_images, seed):
        if split not in splits:
            raise TokenforgeError(f"{shard_dir}: no {split} split")
        return splits[split]

    monkeypatch.setattr(shards, "sample_split", sample_split)
    counts = {split: len(data.keys) for split, data in splits.items()}
    (tmp_path / "stats.json").write_text(json.dumps({"counts": counts}))


def image_set(images: np.ndarray) -> types.SimpleNamespace:
    n = len(images)
    return types.SimpleNamespace(
        keys=[f"img{i:04d}" for i in range(n)], labels=np.arange(n, dtype=np.int64) % 3, images=images,
        class_names=["a", "b", "c"],
    )


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("downsample", [0, 3, 16, 6])
def test_bad_downsample(downsample):
    with pytest.raises(TokenforgeError, match=f"--downsample {downsample}: must be a power of 2"):
        tokenizer.make_config((8, 8), 1, **{**TINY, "downsample": downsample})


def test_config_grid():
    config = tokenizer.make_config((16, 8), 3, **{**TINY, "downsample": 4})
    assert config["grid"] == [4, 2] and config["image_size"] == [16, 8] and config["channels"] == 3
    assert set(config) == set(tokenizer.CONFIG_KEYS)


def test_bad_codebook_size():
    with pytest.raises(TokenforgeError, match="--codebook-size 1"):
        tokenizer.make_config((8, 8), 1, **{**TINY, "codebook_size": 1})


# ------------------------------------------------------------------------------------------ model


def test_loss_decreases(trained):
    _, losses = trained
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_encode_shape_dtype_range(trained):
    model, _ = trained
    images = patterns(10, seed=1)
    ids = model.encode(images)
    assert ids.shape == (10, 4, 4) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < 16
    assert torch.equal(model.encode(torch.from_numpy(images)), ids)
    recon = model.decode(ids)
    assert recon.shape == (10, 1, 8, 8) and recon.dtype == torch.float32
    assert 0 <= float(recon.min()) and float(recon.max()) <= 1


def test_encode_rejects_wrong_images(trained):
    model, _ = trained
    with pytest.raises(TokenforgeError, match="images: expected uint8"):
        model.encode(patterns(2).astype(np.float32))
    with pytest.raises(TokenforgeError, match="images: expected uint8"):
        model.encode(np.zeros((2, 16, 16, 1), np.uint8))
    with pytest.raises(TokenforgeError, match="ids: expected"):
        model.decode(torch.full((1, 4, 4), 16))


def test_codebook_is_what_encode_uses(trained):
    model, _ = trained
    images = patterns(12, seed=2)
    codebook = model.codebook
    assert codebook.shape == (16, 4) and not codebook.requires_grad
    # The library's own quantiser, in eval mode, picks the same codes from the same vectors.
    with torch.no_grad():
        quantized, lib_ids, _ = model.vq(model.encoder(tokenizer.to_float(images)))
    ids = model.encode(images)
    assert torch.equal(ids, lib_ids)
    assert torch.allclose(quantized, codebook[ids].permute(0, 3, 1, 2))
    # codebook is a copy: changing it leaves the model alone
    codebook.zero_()
    assert model.codebook.abs().sum() > 0


def test_encode_does_not_train_the_codebook(trained):
    model, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        model.encode(patterns(8, seed=3))
    finally:
        model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_code_stats_and_psnr():
    stats = training.code_stats(np.array([[0, 0], [1, 1]]), 4)
    assert stats == {"codebook_usage": 0.5, "used_codes": 2, "perplexity": pytest.approx(2.0)}
    assert training.psnr(0.01) == pytest.approx(20.0)


# ------------------------------------------------------------------------------------------ pruning


def pruned_copy(model, images):
    """A copy of `model` pruned to the codes `images` use; (copy, trained ids of images, kept ids)."""
    old = model.encode(images).numpy()
    kept = np.unique(old)
    pruned = copy.deepcopy(model)
    pruned.prune(kept)
    return pruned, old, kept


def test_prune_renumbers_codes(trained):
    model, _ = trained
    images = patterns(6, seed=5)
    pruned, old, kept = pruned_copy(model, images)
    assert len(kept) < 16  # stripes at a few brightnesses never need the whole codebook
    assert pruned.config["codebook_size"] == len(kept) and pruned.config["trained_codebook_size"] == 16
    assert model.config["codebook_size"] == 16  # the original is untouched
    assert torch.equal(pruned.kept_codes, torch.as_tensor(kept))
    assert torch.equal(pruned.codebook, model.codebook[torch.as_tensor(kept)])
    new = pruned.encode(images)
    assert int(new.max()) < len(kept) and np.array_equal(kept[new.numpy()], old)  # same vectors, new numbers
    assert torch.equal(pruned.decode(new), model.decode(torch.as_tensor(old)))
    with pytest.raises(TokenforgeError, match=rf"ids: expected \(N, h, w\) ids in \[0, {len(kept)}\)"):
        pruned.decode(torch.full((1, 4, 4), len(kept)))


def test_pruned_encode_picks_the_nearest_kept_code(trained):
    model, _ = trained
    pruned, _, kept = pruned_copy(model, patterns(2, seed=6))
    images = patterns(20, seed=7)  # may need codes that were dropped
    z = model.encoder(tokenizer.to_float(images)).detach().permute(0, 2, 3, 1)
    dist = torch.cdist(z.reshape(-1, z.shape[-1]), model.codebook[torch.as_tensor(kept)])
    assert torch.equal(pruned.encode(images).reshape(-1), dist.argmin(1))


@pytest.mark.parametrize("kept", [[], [3, 2], [1, 1], [-1, 2], [0, 16], [[0, 1]]])
def test_prune_rejects_bad_codes(trained, kept):
    model = copy.deepcopy(trained[0])
    with pytest.raises(TokenforgeError, match=r"kept codes: expected strictly increasing code ids in \[0, 16\)"):
        model.prune(np.array(kept, dtype=np.int64))


def test_prune_to_used_stats(trained):
    model = copy.deepcopy(trained[0])
    images = patterns(3, seed=8)
    old = model.encode(images).numpy()
    stats = training.prune_to_used(model, images)
    used = len(np.unique(old))
    assert stats["used_codes"] == used == stats["codebook_size"] == model.config["codebook_size"]
    assert stats["trained_codebook_size"] == 16 and stats["codebook_usage"] == used / 16
    assert stats["perplexity"] == pytest.approx(training.code_stats(old, 16)["perplexity"])
    assert stats["perplexity"] == training.code_stats(model.encode(images).numpy(), used)["perplexity"]


def test_prune_to_used_can_keep_all(trained):
    model = copy.deepcopy(trained[0])
    stats = training.prune_to_used(model, patterns(3, seed=8), prune=False)
    assert stats["codebook_size"] == 16 == model.config["codebook_size"] and stats["used_codes"] < 16
    assert torch.equal(model.codebook, trained[0].codebook)


# ------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip(trained, tmp_path):
    model, _ = trained
    tokenizer.save_tokenizer(model, tmp_path)
    loaded = tokenizer.load_tokenizer(tmp_path)
    assert not loaded.training and loaded.config == model.config
    images = patterns(20, seed=4)
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert torch.equal(loaded.codebook, model.codebook)
    assert torch.equal(loaded.decode(model.encode(images)), model.decode(model.encode(images)))


def test_pruned_save_load_round_trip(trained, tmp_path):
    pruned, _, kept = pruned_copy(trained[0], patterns(4, seed=10))
    tokenizer.save_tokenizer(pruned, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["codebook_size"] == len(kept) and config["trained_codebook_size"] == 16
    loaded = tokenizer.load_tokenizer(tmp_path)
    assert torch.equal(loaded.kept_codes, torch.as_tensor(kept)) and loaded.config == pruned.config
    images = patterns(20, seed=11)
    assert torch.equal(loaded.encode(images), pruned.encode(images))
    assert torch.equal(loaded.codebook, pruned.codebook)
    codebook = tokenizer.load_codebook(tmp_path)
    assert codebook.dtype == torch.float32 and torch.equal(codebook, pruned.codebook)
    assert torch.equal(tokenizer.load_codebook(tmp_path / "codebook.safetensors"), codebook)


def test_loads_tokenizers_from_before_pruning(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    model, _ = trained
    tokenizer.save_tokenizer(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["trained_codebook_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["kept_codes"]
    save_file(state, str(tmp_path / "model.safetensors"))
    loaded = tokenizer.load_tokenizer(tmp_path)
    assert torch.equal(loaded.kept_codes, torch.arange(16))
    assert torch.equal(loaded.encode(patterns(5)), model.encode(patterns(5)))


def test_load_rejects_bad_kept_codes(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    pruned, _, kept = pruned_copy(trained[0], patterns(4, seed=10))
    tokenizer.save_tokenizer(pruned, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "codebook_size": len(kept) + 1}))
    with pytest.raises(TokenforgeError, match=r"model\.safetensors: weights do not match config\.json .*kept_codes"):
        tokenizer.load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = load_file(str(tmp_path / "model.safetensors"))
    state["kept_codes"] = state["kept_codes"].flip(0)
    save_file(state, str(tmp_path / "model.safetensors"))
    if len(kept) > 1:
        with pytest.raises(TokenforgeError, match=r"model\.safetensors: kept_codes: expected strictly increasing"):
            tokenizer.load_tokenizer(tmp_path)


def test_load_codebook_errors(trained, tmp_path):
    from safetensors.torch import save_file

    model, _ = trained
    with pytest.raises(TokenforgeError, match="codebook.safetensors: codebook not found"):
        tokenizer.load_codebook(tmp_path)
    tokenizer.save_tokenizer(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "codebook_size": 15}))
    message = r"codebook\.safetensors: codebook torch\.float32 \(16, 4\), but config\.json says codebook_size 15,"
    with pytest.raises(TokenforgeError, match=message):
        tokenizer.load_codebook(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "code_dim": 8}))
    with pytest.raises(TokenforgeError, match="says codebook_size 16, code_dim 8"):
        tokenizer.load_codebook(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"vectors": model.codebook}, str(tmp_path / "codebook.safetensors"))
    with pytest.raises(TokenforgeError, match="codebook.safetensors: no 'codebook' tensor, but config.json says"):
        tokenizer.load_codebook(tmp_path)
    (tmp_path / "codebook.safetensors").write_bytes(b"garbage")
    with pytest.raises(TokenforgeError, match="codebook.safetensors: not a readable safetensors file"):
        tokenizer.load_codebook(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(TokenforgeError, match="config.json: no such file"):
        tokenizer.load_codebook(tmp_path)


def test_same_seed_same_bytes(tmp_path):
    images = patterns(32)
    config = tokenizer.make_config((8, 8), 1, **TINY)
    for name in ("a", "b"):
        model, _ = training.train_tokenizer(images, config, epochs=2, batch_size=8, lr=5e-3)
        (tmp_path / name).mkdir()
        tokenizer.save_tokenizer(model, tmp_path / name)
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("a", "b")]
    assert weights[0] == weights[1]
    other, _ = training.train_tokenizer(images, {**config, "seed": 1}, epochs=2, batch_size=8, lr=5e-3)
    assert not torch.equal(other.codebook, model.codebook)


def test_load_errors(trained, tmp_path):
    model, _ = trained
    with pytest.raises(TokenforgeError, match="config.json: no such file"):
        tokenizer.load_tokenizer(tmp_path)
    tokenizer.save_tokenizer(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "codebook_size": 32}))
    with pytest.raises(TokenforgeError, match=r"model\.safetensors: weights do not match config\.json"):
        tokenizer.load_tokenizer(tmp_path)
    del config["grid"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TokenforgeError, match="config.json: missing key"):
        tokenizer.load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(model.config))
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(TokenforgeError, match="model.safetensors: weights do not match"):
        tokenizer.load_tokenizer(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(TokenforgeError, match="model.safetensors: tokenizer weights not found"):
        tokenizer.load_tokenizer(tmp_path)


# ------------------------------------------------------------------------------------------ reconstruction grid


def test_reconstruction_grid_layout(trained):
    model, _ = trained
    images = patterns(5, seed=12)
    grid = training.reconstruction_grid(model, images)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 64 + 3 * 2, 5 * (64 + 2) + 2, 1)  # 8 px -> 64 px
    top = grid[2 : 2 + 64, 2 + 66 : 2 + 66 + 64]  # second original, scaled up 8x by nearest neighbour
    assert np.array_equal(top, images[1].repeat(8, 0).repeat(8, 1))
    recon = model.decode(model.encode(images[1:2]))[0, 0].mul(255).round().numpy().astype(np.uint8)
    assert np.array_equal(grid[2 + 64 + 2 :: 8, 2 + 66 : 2 + 66 + 64 : 8][:8, :8, 0], recon)
    assert grid[0, 0, 0] == 128 and grid[66, 5, 0] == 128  # grey gaps


def test_reconstruction_grid_png_takes_first_images_by_key(trained, tmp_path):
    from PIL import Image

    model, _ = trained
    images = patterns(20, seed=13)
    image_set = types.SimpleNamespace(keys=[f"img{i:02d}" for i in reversed(range(20))], images=images)
    training.save_reconstruction_grid(model, image_set, tmp_path / "r.png")
    with Image.open(tmp_path / "r.png") as png:
        assert png.mode == "L" and png.size == (16 * 66 + 2, 134)
        pixels = np.asarray(png)
    # img00 is the last image: it comes first
    assert np.array_equal(pixels[2:66, 2:66], images[19, :, :, 0].repeat(8, 0).repeat(8, 1))


def test_reconstruction_grid_rgb_and_large_images():
    config = tokenizer.make_config((32, 32), 3, **{**TINY, "downsample": 4})
    model = tokenizer.build_model(config).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    grid = training.reconstruction_grid(model, images)
    assert grid.shape == (2 * 64 + 6, 3 * 66 + 2, 3)  # 32 px scaled up 2x
    assert np.array_equal(grid[2:66, 2:66], images[0].repeat(2, 0).repeat(2, 1))


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def tokenforge(monkeypatch):
    monkeypatch.setattr(cli, "STAGES", ("tokenizer",))
    return cli.main


TINY_ARGS = ["--codebook-size", "16", "--code-dim", "4", "--hidden-dim", "8", "--epochs", "2", "--batch-size", "16"]


@pytest.mark.parametrize("with_test", [True, False])
def test_cli_trains_and_writes(tokenforge, monkeypatch, tmp_path, with_test):
    splits = {"train": image_set(patterns(48))}
    if with_test:
        splits["test"] = image_set(patterns(16, seed=9))
    fake_shards(monkeypatch, tmp_path, splits)
    out = tmp_path / "tok"
    assert tokenforge(["tokenizer", "--shards", str(tmp_path), "--out", str(out), *TINY_ARGS, "-q"]) == 0
    files = {"model.safetensors", "codebook.safetensors", "config.json", "stats.json", "reconstructions.png"}
    assert files <= {p.name for p in out.iterdir()}
    stats = json.loads((out / "stats.json").read_text())
    assert {"mse", "psnr", "codebook_usage", "used_codes", "perplexity", "epochs", "wall_s"} <= set(stats)
    assert stats["eval_split"] == ("test" if with_test else "train")
    assert 0 < stats["codebook_usage"] <= 1 and stats["epochs"] == 2 and stats["psnr"] > 0
    # pruned to the codes the train split uses
    used = stats["used_codes"]
    assert stats["trained_codebook_size"] == 16 and stats["codebook_size"] == used
    assert stats["codebook_usage"] == pytest.approx(used / 16)
    config = json.loads((out / "config.json").read_text())
    assert config == {**tokenizer.make_config((8, 8), 1, **TINY), "codebook_size": used}
    model = tokenizer.load_tokenizer(out)
    ids = model.encode(splits["train"].images)
    assert ids.shape == (48, 4, 4) and len(torch.unique(ids)) == used and int(ids.max()) == used - 1
    assert training.code_stats(ids.numpy(), used)["perplexity"] == pytest.approx(stats["perplexity"])
    assert torch.equal(tokenizer.load_codebook(out), model.codebook) and model.codebook.shape == (used, 4)
    assert (out / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(key.startswith("scene_color") for key in stats)  # no scenes: no colour check


def test_cli_scene_color_recovery(tokenforge, monkeypatch, tmp_path):
    """On scenes (images with their scene records) stats.json has the share of objects whose colour survives
    decode(encode(image)), beside the same check on the images themselves."""
    from tokenforge.data.sources.scenes import scenes_source

    source = scenes_source(24, 16, seed=0)
    train = image_set(np.stack([np.asarray(source.image(i)) for i in range(len(source))]))
    train.texts = source.texts
    fake_shards(monkeypatch, tmp_path, {"train": train})
    out = tmp_path / "tok"
    assert tokenforge(["tokenizer", "--shards", str(tmp_path), "--out", str(out), *TINY_ARGS, "-q"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["scene_color_objects"] == sum(len(r["scene"]) for r in source.texts)
    assert stats["scene_color_recovery_original"] > 0.95 and 0 <= stats["scene_color_recovery"] <= 1


def test_cli_no_prune(tokenforge, monkeypatch, tmp_path):
    fake_shards(monkeypatch, tmp_path, {"train": image_set(patterns(8))})
    out = tmp_path / "tok"
    assert tokenforge(["tokenizer", "--shards", str(tmp_path), "--out", str(out), *TINY_ARGS, "--no-prune", "-q"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["codebook_size"] == stats["trained_codebook_size"] == 16 and stats["used_codes"] < 16
    assert json.loads((out / "config.json").read_text())["codebook_size"] == 16
    assert tokenizer.load_codebook(out).shape == (16, 4)


def test_run_logs_grid_and_numbers(monkeypatch, tmp_path):
    import argparse

    fake_shards(monkeypatch, tmp_path, {"train": image_set(patterns(16)), "test": image_set(patterns(4, seed=3))})
    parser = argparse.ArgumentParser()
    tokenizer_cli.add_arguments(parser)
    args = parser.parse_args(["--shards", str(tmp_path), "--out", str(tmp_path / "tok"), *TINY_ARGS])
    logged = types.SimpleNamespace(metrics={}, artifacts=[], params={})
    tracker = types.SimpleNamespace(
        log_params=logged.params.update,
        log_metrics=lambda metrics, step=None: logged.metrics.update(metrics),
        log_artifact=lambda path, artifact_path=None: logged.artifacts.append(path.name),
    )
    tokenizer_cli.run(args, tracker)
    assert {"psnr", "mse", "codebook_usage", "used_codes", "perplexity", "trained_codebook_size"} <= set(logged.metrics)
    assert "reconstructions.png" in logged.artifacts and logged.params["prune"] is True


def test_cli_bad_downsample(tokenforge, monkeypatch, tmp_path, capsys):
    fake_shards(monkeypatch, tmp_path, {"train": image_set(patterns(8))})
    out = tmp_path / "tok"
    rc = tokenforge(["tokenizer", "--shards", str(tmp_path), "--out", str(out), "--downsample", "3", "-q"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == "tokenforge tokenizer: error: --downsample 3: must be a power of 2 that divides the image size 8x8"
    assert not out.exists()


def test_one_class_for_isinstance_and_pickle(trained):
    model, _ = trained
    assert isinstance(model, tokenizer.VQTokenizer)
    assert torch.equal(pickle.loads(pickle.dumps(model)).encode(patterns(2)), model.encode(patterns(2)))


@pytest.mark.parametrize("option, kwargs", [("--epochs 0", dict(epochs=0)), ("--lr -1.0", dict(lr=-1.0))])
def test_bad_training_options(option, kwargs):
    config = tokenizer.make_config((8, 8), 1, **TINY)
    args = {"epochs": 1, "batch_size": 8, "lr": 1e-3, **kwargs}
    with pytest.raises(TokenforgeError, match=f"{option}: must be positive"):
        training.train_tokenizer(patterns(8), config, **args)
