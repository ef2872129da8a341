"""The VQ tokenizer: training, encode/decode, save/load, determinism, and `tokenforge tokenizer`."""

import importlib
import json
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from tokenforge import cli, tokenizer
from tokenforge.errors import TokenforgeError

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
    model, losses = tokenizer.train_tokenizer(patterns(64), config, epochs=3, batch_size=16, lr=5e-3)
    return model, losses


def fake_shards(monkeypatch, tmp_path, splits: dict) -> types.ModuleType:
    """Serve in-memory ImageSets through tokenforge.shard.load_split (shard.py is tested on its own)."""
    try:
        shard = importlib.import_module("tokenforge.shard")
    except ImportError:  # written in parallel; stand in for it
        shard = types.ModuleType("tokenforge.shard")
        monkeypatch.setitem(sys.modules, "tokenforge.shard", shard)

    def load_split(shard_dir, split):
        if split not in splits:
            raise TokenforgeError(f"{shard_dir}: no {split} split")
        return splits[split]

    monkeypatch.setattr(shard, "load_split", load_split, raising=False)
    counts = {split: len(data.keys) for split, data in splits.items()}
    (tmp_path / "stats.json").write_text(json.dumps({"counts": counts}))
    return shard


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
    stats = tokenizer.code_stats(np.array([[0, 0], [1, 1]]), 4)
    assert stats == {"codebook_usage": 0.5, "used_codes": 2, "perplexity": pytest.approx(2.0)}
    assert tokenizer.psnr(0.01) == pytest.approx(20.0)


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


def test_same_seed_same_bytes(tmp_path):
    images = patterns(32)
    config = tokenizer.make_config((8, 8), 1, **TINY)
    for name in ("a", "b"):
        model, _ = tokenizer.train_tokenizer(images, config, epochs=2, batch_size=8, lr=5e-3)
        (tmp_path / name).mkdir()
        tokenizer.save_tokenizer(model, tmp_path / name)
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("a", "b")]
    assert weights[0] == weights[1]
    other, _ = tokenizer.train_tokenizer(images, {**config, "seed": 1}, epochs=2, batch_size=8, lr=5e-3)
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
    assert {"model.safetensors", "config.json", "stats.json"} <= {p.name for p in out.iterdir()}
    stats = json.loads((out / "stats.json").read_text())
    assert {"mse", "psnr", "codebook_usage", "used_codes", "perplexity", "epochs", "wall_s"} <= set(stats)
    assert stats["eval_split"] == ("test" if with_test else "train")
    assert 0 < stats["codebook_usage"] <= 1 and stats["epochs"] == 2 and stats["psnr"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config == tokenizer.make_config((8, 8), 1, **TINY)
    assert tokenizer.load_tokenizer(out).encode(patterns(3)).shape == (3, 4, 4)


def test_cli_bad_downsample(tokenforge, monkeypatch, tmp_path, capsys):
    fake_shards(monkeypatch, tmp_path, {"train": image_set(patterns(8))})
    out = tmp_path / "tok"
    rc = tokenforge(["tokenizer", "--shards", str(tmp_path), "--out", str(out), "--downsample", "3", "-q"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == "tokenforge tokenizer: error: --downsample 3: must be a power of 2 that divides the image size 8x8"
    assert not out.exists()


def test_import_is_light():
    # `tokenforge --help` imports every stage module: torch must only load when a model is built.
    code = "import sys, tokenforge.tokenizer, tokenforge.tokenize, tokenforge.synonyms; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_one_class_for_isinstance_and_pickle(trained):
    model, _ = trained
    assert isinstance(model, tokenizer.VQTokenizer)
    assert torch.equal(pickle.loads(pickle.dumps(model)).encode(patterns(2)), model.encode(patterns(2)))


@pytest.mark.parametrize("option, kwargs", [("--epochs 0", dict(epochs=0)), ("--lr -1.0", dict(lr=-1.0))])
def test_bad_training_options(option, kwargs):
    config = tokenizer.make_config((8, 8), 1, **TINY)
    args = {"epochs": 1, "batch_size": 8, "lr": 1e-3, **kwargs}
    with pytest.raises(TokenforgeError, match=f"{option}: must be positive"):
        tokenizer.train_tokenizer(patterns(8), config, **args)
