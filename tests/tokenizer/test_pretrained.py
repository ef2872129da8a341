"""Pretrained tokenizers (`tokenizer.pretrained`): a tiny diffusers VQModel saved with save_pretrained, encoded and
decoded as diffusers does, pruned and renumbered, written by `tokenforge tokenizer --pretrained` as a self-contained
tokenizer folder that `load_tokenizer`, `load_codebook` and `tokenforge synonyms` read; bad folders; the pipeline."""

import json
import shutil
import types

import numpy as np
import pytest
import torch
from helpers.pipeline import TINY, snakemake, write_config

from tokenforge import cli
from tokenforge.data import shards
from tokenforge.errors import TokenforgeError
from tokenforge.tokenizer import pretrained
from tokenforge.tokenizer import train as training
from tokenforge.tokenizer import vq
from tokenforge.tokenizer.synonyms import nearest_codes

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")

# A VQModel small enough to build in milliseconds: 2 down blocks (a 16x16 image -> an 8x8 grid), 32 codes of dim 4.
TINY_VQ = dict(
    block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4, num_vq_embeddings=32, vq_embed_dim=4, sample_size=16, layers_per_block=1, norm_num_groups=4,
)
FAR = (5, 17, 30)  # codes moved far from every latent: no image uses them, so pruning drops them


def tiny_vqmodel(**overrides):
    """A seeded tiny VQModel whose codebook is latents of smooth random images (so images use most codes), but FAR."""
    torch.manual_seed(0)
    model = diffusers.VQModel(**{**TINY_VQ, **overrides}).eval()
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(8, model.config.in_channels, 4, 4, generator=g), size=16,
                                             mode="bilinear") * 2 - 1
    with torch.no_grad():
        latents = model.encode(smooth).latents.permute(0, 2, 3, 1).reshape(-1, 4)
        codebook = latents[torch.randperm(len(latents), generator=g)[:32]].clone()
        codebook[list(FAR)] = 1e3
        model.quantize.embedding.weight.copy_(codebook)
    return model


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vq") / "vq-tiny"
    tiny_vqmodel().save_pretrained(path)
    return path


def images(n: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """uint8 (n, 16, 16, channels): smooth random blobs, upsampled from 4x4."""
    coarse = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, channels)).astype(np.uint8)
    return coarse.repeat(4, axis=1).repeat(4, axis=2)


def diffusers_ids_and_recon(model, x_uint8: np.ndarray):
    """What diffusers itself does: VectorQuantizer's ids over all codes, and forward()'s reconstruction in [0,1]."""
    x = torch.as_tensor(x_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).expand(-1, 3, -1, -1)
    with torch.no_grad():
        latents = model.encode(x).latents
        ids = model.quantize(latents)[2][2].reshape(len(x), *latents.shape[2:])
        recon = model(x).sample.add(1).div(2).clamp(0, 1)
    return ids, recon


# ------------------------------------------------------------------------------------------ model


@pytest.mark.parametrize("lookup", [False, True], ids=["ldm", "lookup_from_codebook"])
def test_encode_and_decode_are_diffusers_own(tmp_path, lookup):
    model = tiny_vqmodel(lookup_from_codebook=lookup)
    model.save_pretrained(tmp_path / "vq")
    tok = pretrained.from_folder(tmp_path / "vq", (16, 16), 3, seed=0)
    x = images(6, channels=3)
    ids, recon = diffusers_ids_and_recon(model, x)
    assert tok.config["grid"] == [8, 8] and tok.config["downsample"] == 2 and tok.config["code_dim"] == 4
    assert torch.equal(tok.encode(x), ids)
    assert torch.allclose(tok.decode(ids), recon, atol=1e-5)
    assert torch.equal(tok.codebook, model.quantize.embedding.weight.detach())


def test_grey_images_are_repeated_for_an_rgb_model(vq_dir):
    tok = pretrained.from_folder(vq_dir, (16, 16), 1, seed=0)
    grey = images(4)
    rgb = pretrained.from_folder(vq_dir, (16, 16), 3, seed=0)
    assert torch.equal(tok.encode(grey), rgb.encode(grey.repeat(3, axis=3)))
    out = tok.decode(tok.encode(grey))
    assert out.shape == (4, 1, 16, 16) and torch.allclose(out, rgb.decode(tok.encode(grey)).mean(1, keepdim=True))
    with pytest.raises(TokenforgeError, match=r"images: expected uint8 \(N, 16, 16, 1\)"):
        tok.encode(images(1, channels=3))


def test_prune_keeps_the_used_codes_renumbered_and_encodes_to_the_nearest_kept(vq_dir):
    tok = pretrained.from_folder(vq_dir, (16, 16), 1, seed=0)
    fit, other = images(40), images(20, seed=7)
    before_ids, before_recon = tok.encode(fit), tok.decode(tok.encode(fit))
    usage = training.prune_to_used(tok, fit)
    kept = np.unique(before_ids.numpy())
    assert not set(FAR) & set(kept.tolist()) and usage["codebook_size"] == len(kept) == tok.config["codebook_size"]
    assert usage["trained_codebook_size"] == 32 and usage["used_codes"] == len(kept)
    assert torch.equal(tok.kept_codes, torch.as_tensor(kept))  # ascending by original id
    assert torch.equal(tok.encode(fit), torch.as_tensor(np.searchsorted(kept, before_ids.numpy())))
    assert torch.allclose(tok.decode(tok.encode(fit)), before_recon)  # the same vectors under new numbers
    embedding = tok.vqmodel.quantize.embedding.weight.detach()
    assert torch.equal(tok.codebook, embedding[kept])
    # images the sample did not see: the nearest KEPT code, by the Euclidean distance diffusers uses
    x = torch.as_tensor(other).permute(0, 3, 1, 2).float().div(127.5).sub(1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        latents = tok.vqmodel.encode(x).latents.permute(0, 2, 3, 1).reshape(-1, 4)
    expect = torch.cdist(latents, embedding[kept]).argmin(1).reshape(20, 8, 8)
    assert torch.equal(tok.encode(other), expect) and int(expect.max()) < len(kept)
    with pytest.raises(TokenforgeError, match="kept codes: expected strictly increasing"):
        tok.prune([3, 2])


# ------------------------------------------------------------------------------------------ the stage


def fake_shards(monkeypatch, root, splits: dict) -> None:
    """Serve in-memory images through tokenforge.data.shards.sample_split (the seeded sample is tested there)."""

    def sample_split(shard_dir, split, max_images, seed):
        data = splits[split]
        n = len(data) if max_images is None else min(len(data), max_images)
        return types.SimpleNamespace(keys=[f"img{i:04d}" for i in range(n)], labels=np.zeros(n, dtype=np.int64),
                                     images=data[:n], class_names=["a"])

    monkeypatch.setattr(shards, "sample_split", sample_split)
    (root / "stats.json").write_text(json.dumps({"counts": {split: len(data) for split, data in splits.items()}}))


@pytest.fixture
def tokenforge(monkeypatch):
    monkeypatch.setattr(cli, "STAGES", ("tokenizer", "synonyms"))
    return cli.main


def run_import(tokenforge, shard_dir, out, vq_path, *extra) -> int:
    return tokenforge(["tokenizer", "--shards", str(shard_dir), "--out", str(out), "--pretrained", str(vq_path),
                       "--max-images", "48", "--device", "cpu", "-q", *extra])


def test_cli_writes_a_self_contained_tokenizer_folder(tokenforge, monkeypatch, tmp_path, vq_dir):
    source = tmp_path / "vq"
    shutil.copytree(vq_dir, source)
    fake_shards(monkeypatch, tmp_path, {"train": images(64), "test": images(8, seed=3)})
    assert run_import(tokenforge, tmp_path, tmp_path / "tok", source) == 0
    assert run_import(tokenforge, tmp_path, tmp_path / "again", source) == 0
    out = tmp_path / "tok"
    files = ["model.safetensors", "codebook.safetensors", "config.json", "stats.json", "reconstructions.png"]
    assert set(files) <= {p.name for p in out.iterdir()}
    for name in files[:3]:  # deterministic on a CPU
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    expected = pretrained.from_folder(source, (16, 16), 1, seed=0)
    usage = training.prune_to_used(expected, images(48))  # the first 48 of the fake sample
    stats, config = (json.loads((out / name).read_text()) for name in ("stats.json", "config.json"))
    assert stats["codebook_size"] == usage["codebook_size"] == config["codebook_size"] < 32
    assert stats["train_images"] == 48 and stats["eval_split"] == "test" and stats["psnr"] > 0
    assert config["kind"] == pretrained.KIND and config["pretrained"] == str(source.resolve())
    assert config["trained_codebook_size"] == 32 and config["grid"] == [8, 8] and config["vqmodel"]["sample_size"] == 16
    shutil.rmtree(source)  # the run folder needs the pretrained folder no more
    model = vq.load_tokenizer(out)
    assert isinstance(model, pretrained.PretrainedVQ) and torch.equal(model.kept_codes, expected.kept_codes)
    assert torch.equal(model.encode(images(10, seed=5)), expected.encode(images(10, seed=5)))
    assert torch.equal(vq.load_codebook(out), expected.codebook)
    # synonyms come from its (pruned) codebook
    assert tokenforge(["synonyms", "--tokenizer", str(out), "--out", str(tmp_path / "syn.json"), "--k", "3"]) == 0
    synonyms = json.loads((tmp_path / "syn.json").read_text())
    assert synonyms == {str(i): row.tolist() for i, row in enumerate(nearest_codes(expected.codebook.numpy(), 3))}


def test_logged_params_never_contradict_the_flags(monkeypatch, tmp_path, vq_dir):
    """Every flag is logged as given when the job starts; MLflow refuses a param logged again with another value."""
    import argparse

    from tokenforge.cli import tokenizer as tokenizer_cli

    fake_shards(monkeypatch, tmp_path, {"train": images(8)})
    parser = argparse.ArgumentParser()
    tokenizer_cli.add_arguments(parser)
    args = parser.parse_args(["--shards", str(tmp_path), "--out", str(tmp_path / "tok"), "--pretrained", str(vq_dir),
                              "--device", "cpu"])
    params = {}
    tracker = types.SimpleNamespace(log_params=params.update, log_metrics=lambda metrics, step=None: None,
                                    log_artifact=lambda path, artifact_path=None: None)
    tokenizer_cli.run(args, tracker)
    flags = {key: str(value) for key, value in vars(args).items()}
    assert {key: str(value) for key, value in params.items() if key in flags}.items() <= flags.items()
    assert params["kind"] == pretrained.KIND and params["vq_code_dim"] == 4 and params["vq_codebook_size"] == 32


def test_cli_no_prune_keeps_every_code(tokenforge, monkeypatch, tmp_path, vq_dir):
    fake_shards(monkeypatch, tmp_path, {"train": images(16)})
    assert run_import(tokenforge, tmp_path, tmp_path / "tok", vq_dir, "--no-prune") == 0
    assert vq.load_codebook(tmp_path / "tok").shape == (32, 4)
    assert json.loads((tmp_path / "tok" / "stats.json").read_text())["eval_split"] == "train"


def broken_folders(root, vq_dir) -> dict:
    """name -> (folder, what the one-line error says)."""
    (root / "empty").mkdir()
    (root / "kl").mkdir()
    (root / "kl" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    (root / "noweights").mkdir()
    shutil.copy(vq_dir / "config.json", root / "noweights" / "config.json")
    return {
        "missing": (root / "nope", "no such directory"),
        "no-config": (root / "empty", "no config.json"),
        "not-a-vqmodel": (root / "kl", "describes AutoencoderKL, not a diffusers VQModel"),
        "no-weights": (root / "noweights", "cannot load its VQModel"),
    }


@pytest.mark.parametrize("case", ["missing", "no-config", "not-a-vqmodel", "no-weights"])
def test_bad_folder_is_one_line_naming_the_key(tokenforge, monkeypatch, tmp_path, vq_dir, capsys, case):
    fake_shards(monkeypatch, tmp_path, {"train": images(4)})
    folder, says = broken_folders(tmp_path, vq_dir)[case]
    out = tmp_path / "tok"
    assert run_import(tokenforge, tmp_path, out, folder) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"tokenizer.pretrained {folder}: " in err and says in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "size, channels, overrides, says",
    [
        (16, 3, {"in_channels": 1, "out_channels": 1}, "takes 1-channel images and gives 1, the shards hold 3-channel"),
        (18, 1, {"sample_size": 18, "block_out_channels": (8, 8, 16), "down_block_types": ("DownEncoderBlock2D",) * 3,
                 "up_block_types": ("UpDecoderBlock2D",) * 3},
         "downsamples by 4, which does not divide the image size 18x18 (set shard.image_size to a multiple of 4)"),
    ],
    ids=["channels", "downsample"],
)
def test_shape_mismatch_fails_naming_the_key(tmp_path, size, channels, overrides, says):
    tiny_vqmodel(**overrides).save_pretrained(tmp_path / "vq")
    with pytest.raises(TokenforgeError, match="tokenizer.pretrained .*" + says.replace("(", r"\(").replace(")", r"\)")):
        pretrained.from_folder(tmp_path / "vq", (size, size), channels, seed=0)


def test_sample_size_is_only_a_hint(vq_dir, caplog):
    """A VQModel is convolutional (aMUSEd's VQ says 32 and encodes 512 px images): another size only warns."""
    tok = pretrained.from_folder(vq_dir, (32, 24), 1, seed=0)
    assert tok.encode(images(2).repeat(2, axis=1).repeat(2, axis=2)[:, :, :24]).shape == (2, 16, 12)
    assert "its sample_size is 16x16, the shards hold 32x24 images" in caplog.text


def test_saved_folder_with_wrong_weights_fails(tmp_path, vq_dir):
    tok = pretrained.from_folder(vq_dir, (16, 16), 1, seed=0)
    vq.save_tokenizer(tok, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vqmodel": {**config["vqmodel"], "vq_embed_dim": 8}}))
    with pytest.raises(TokenforgeError, match="model.safetensors: weights do not match config.json"):
        vq.load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "kind": "maskgit"}))
    with pytest.raises(TokenforgeError, match="unknown tokenizer kind 'maskgit'"):
        vq.load_tokenizer(tmp_path)


# ------------------------------------------------------------------------------------------ the pipeline


def pretrained_config(vq_path) -> str:
    """TINY with the tiny VQModel as its tokenizer (digits resized to its 16x16); one thread: tiny convolutions on a
    busy 2-core machine ran 20x slower on two."""
    tokenizer = f"tokenizer: {{pretrained: {json.dumps(str(vq_path))}}}\nshard: {{image_size: 16}}\nthreads: 1"
    return TINY.replace("tokenizer: {codebook_size: 32, code_dim: 8, hidden_dim: 16, epochs: 2}", tokenizer)


def test_dry_run_imports_instead_of_training(workdir, vq_dir):
    text = pretrained_config(vq_dir)
    assert "pretrained" in text
    out = snakemake(workdir, "-n", "-p", "--configfile", write_config(workdir, text)).stdout
    command = next(line for line in out.splitlines() if " tokenizer --shards " in line)
    assert f"--pretrained {vq_dir}" in command and "--max-images" in command and "--epochs" not in command
    bad = write_config(workdir, pretrained_config(workdir / "nope"))
    proc = snakemake(workdir, "-n", "--configfile", bad, check=False)
    assert proc.returncode != 0 and "config key tokenizer.pretrained" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_pipeline_with_a_pretrained_tokenizer(workdir, vq_dir):
    """The whole tiny pipeline, its tokenizer the tiny VQModel (the import in place of training), on the tiny digits
    at 16x16; shard -> tokenizer -> tokenize -> synonyms -> split -> train, evaluate x 2 -> package."""
    cfg = write_config(workdir, pretrained_config(vq_dir))
    proc = snakemake(workdir, "--configfile", cfg)
    assert "MLflow sync failed" not in proc.stdout + proc.stderr  # no param logged twice with two values
    run = workdir / "results" / "tiny"
    config = json.loads((run / "tokenizer" / "config.json").read_text())
    stats = json.loads((run / "tokens" / "stats.json").read_text())
    assert config["kind"] == pretrained.KIND and stats["grid"] == [8, 8]
    assert stats["num_codes"] == config["codebook_size"] <= 32 - len(FAR)
    synonyms = json.loads((run / "synonyms" / "synonyms.json").read_text())
    assert len(synonyms) == config["codebook_size"]
    matrix = json.loads((run / "package" / "metrics.json").read_text())["accuracy_matrix"]
    assert len(matrix) == 2 and 0 <= matrix[1][0] <= 1
