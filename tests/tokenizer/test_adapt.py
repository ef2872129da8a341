"""TokenAdapt (tokenizer/adapt.py, tokenizer/adapt_train.py, `tokenforge tokenadapt`): the shapes of f and g, the
spatial transforms acting alike on pixels and maps, the stage on tiny digits (loss falls, same seed same bytes,
better than the nearest-neighbour baseline), saving/loading, and one-line errors."""

import json

import numpy as np
import pytest
import torch

from tokenforge.cli import main
from tokenforge.errors import TokenforgeError
from tokenforge.tokenizer.adapt import (
    AdapterConfig,
    SpatialParams,
    TokenAdapter,
    apply_spatial,
    check_codebook,
    draw_spatial,
    lattice_of,
    load_adapter,
    save_adapter,
    sincos_positions,
    transform_ids_nearest,
    transform_pixels,
)
from tokenforge.tokenizer.vq import build_model, make_config, save_tokenizer

STAGE = ["--epochs", "30", "--lr", "3e-3", "--width", "32", "--heads", "4", "--batch-size", "32", "--threads", "1", "-q"]


pytestmark = pytest.mark.usefixtures("one_thread")


def adapter(codes=16, dim=8, grid=(4, 4), seed=0) -> TokenAdapter:
    torch.manual_seed(seed)
    return TokenAdapter(AdapterConfig(codes, dim, grid, width=16, heads=2), torch.randn(codes, dim))


def params(n, flip=False, angle=0.0, translate=(0.0, 0.0), shear=0.0, box=None, lattice=(8, 8)) -> SpatialParams:
    box = box or (0, 0, *lattice)
    return SpatialParams(torch.full((n,), flip), torch.full((n,), float(angle)), torch.tensor([translate] * n),
                         torch.full((n,), float(shear)), torch.tensor([box] * n), lattice)


# ------------------------------------------------------------------------------------------ the model


def test_f_doubles_the_grid_and_g_gives_code_logits():
    a = adapter(grid=(3, 5))
    ids = torch.randint(16, (2, 3, 5))
    maps = a.f(ids)
    assert maps.shape == (2, 8, 6, 10) and a.g(maps).shape == (2, 16, 3, 5) and a(ids).shape == (2, 16, 3, 5)
    assert isinstance(a.f_block.mlp.act, torch.nn.Tanh) and isinstance(a.g_block.mlp.act, torch.nn.Tanh)
    with pytest.raises(TokenforgeError, match=r"expects \(batch, 3, 5\) id grids"):
        a.f(torch.zeros(2, 4, 4, dtype=torch.long))


def test_sincos_positions_are_fixed_and_distinct():
    pos = sincos_positions(16, 3, 4)
    assert pos.shape == (12, 16) and torch.equal(pos, sincos_positions(16, 3, 4))
    assert torch.cdist(pos, pos).add(torch.eye(12)).min() > 0.1
    assert "pos" not in adapter().state_dict()  # fixed: not saved, not trained


@pytest.mark.parametrize("width, heads, message", [(18, 2, "multiple of 4"), (16, 3, "must divide")])
def test_bad_sizes(width, heads, message):
    with pytest.raises(TokenforgeError, match=message):
        AdapterConfig(16, 8, (4, 4), width=width, heads=heads)


def test_save_load_round_trip_is_frozen(tmp_path):
    a = adapter()
    save_adapter(a, tmp_path, {"note": 1})
    b = load_adapter(tmp_path)
    ids = torch.randint(16, (3, 4, 4))
    assert torch.equal(a.eval()(ids), b(ids)) and not b.training
    assert not any(p.requires_grad for p in b.parameters())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["grid"] == [4, 4] and config["width"] == 16 and config["note"] == 1 and len(config["codebook_sha256"]) == 64


def test_load_errors(tmp_path):
    with pytest.raises(TokenforgeError, match="no such file"):
        load_adapter(tmp_path / "none")
    save_adapter(adapter(), tmp_path, {})
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "width": 32}))
    with pytest.raises(TokenforgeError, match="weights do not match config.json"):
        load_adapter(tmp_path)


def test_check_codebook_takes_the_raw_or_standardised_codebook_only():
    from tokenforge.models.vit import standardised

    a = adapter()
    check_codebook(a, a.codebook, "x")
    check_codebook(a, standardised(a.codebook), "x")
    for other in (torch.randn(16, 8), torch.randn(12, 8)):
        with pytest.raises(TokenforgeError, match="x: an adapter made for another codebook"):
            check_codebook(a, other, "x")


# ----------------------------------------------------------------------------------- spatial transforms


def test_draws_are_seeded_identity_samples_untouched_and_boxes_inside():
    draw = lambda: draw_spatial(200, (8, 8), torch.Generator().manual_seed(3), identity_p=0.3)  # noqa: E731
    p, q = draw(), draw()
    assert all(torch.equal(getattr(p, k), getattr(q, k)) for k in ("flip", "angle", "translate", "shear", "box"))
    top, left, height, width = p.box.T
    assert (top >= 0).all() and (left >= 0).all() and (height >= 1).all() and (top + height <= 8).all() and (left + width <= 8).all()
    assert p.angle.abs().max() <= 30 and p.translate.abs().max() <= 0.2 and p.shear.abs().max() <= 15
    assert 0.3 < p.flip.float().mean() < 0.7 and 0.1 < (p.angle != 0).float().mean() < 0.4
    x = torch.randn(200, 2, 8, 8)
    out = apply_spatial(x, p)
    same = (out == x).flatten(1).all(1)
    untouched = ~p.flip & (p.angle == 0) & (p.shear == 0) & (p.translate == 0).all(1) & (p.box == torch.tensor([0, 0, 8, 8])).all(1)
    assert torch.equal(same, untouched) and untouched.float().mean() > 0.25


def test_each_sample_gets_its_own_transform():
    """torchvision on a 4-D tensor would give the whole batch one draw; ours differ per sample."""
    x = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(2, 1, 1, 1)
    p = params(2)
    p.flip[1] = True
    out = apply_spatial(x, p)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))


@pytest.mark.parametrize(
    "transform",
    [dict(flip=True), dict(angle=90.0), dict(translate=(0.25, -0.5)), dict(box=(2, 0, 4, 4)),
     dict(flip=True, angle=-90.0, translate=(0.25, 0.25), box=(0, 2, 6, 6))],
    ids=["flip", "rotate-90", "translate-tokens", "crop", "all"],
)
def test_pixels_and_maps_move_alike_in_relative_coordinates(transform):
    """An image made of constant 4x4-pixel token cells (16x16, downsample 4) and the 8x8 map of its ids (2x2 cells a
    token) under the same transform, nearest-neighbour: the image read at every second pixel is the map."""
    ids = torch.arange(16.0).reshape(1, 1, 4, 4)
    image = ids.repeat_interleave(4, 2).repeat_interleave(4, 3)
    cells = ids.repeat_interleave(2, 2).repeat_interleave(2, 3)
    p = params(1, lattice=lattice_of((4, 4), 4), **transform)
    moved_image = apply_spatial(image, p, nearest=True, fill=-1.0)
    moved_cells = apply_spatial(cells, p, nearest=True, fill=-1.0)
    assert not torch.equal(moved_cells, cells)
    assert torch.equal(moved_image[..., ::2, ::2], moved_cells)


def test_the_pixel_and_nearest_id_helpers():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
    p = params(3, flip=True)
    out = transform_pixels(images, p)
    assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(images[:, :, ::-1].copy()))
    ids = torch.randint(16, (3, 4, 4))
    assert torch.equal(transform_ids_nearest(ids, p, fill=0), ids.flip(-1))
    shifted = transform_ids_nearest(ids, params(3, translate=(0.25, 0.0)), fill=99)
    assert (shifted[:, :, 0] == 99).all() and torch.equal(shifted[:, :, 1:], ids[:, :, :-1])


# ------------------------------------------------------------------------------------------ the stage


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Shards of 8x8 digits (20 a class) and a tiny trained tokenizer (16 codes, 4x4 grid)."""
    root = tmp_path_factory.mktemp("adapt")
    assert main(["shard", "--source", "digits", "--max-per-class", "20", "--out", str(root / "shard"), "-q"]) == 0
    assert main(["tokenizer", "--shards", str(root / "shard"), "--out", str(root / "tokenizer"), "--codebook-size", "16",
                 "--code-dim", "4", "--hidden-dim", "8", "--epochs", "3", "--threads", "1", "-q"]) == 0
    return root


def stage(root, out, *extra):
    return main(["tokenadapt", "--shards", str(root / "shard"), "--tokenizer", str(root / "tokenizer"), "--out", str(out),
                 *STAGE, *extra])


def test_the_stage_learns_is_deterministic_and_beats_the_baseline(digits, tmp_path):
    assert stage(digits, tmp_path / "a") == 0
    assert stage(digits, tmp_path / "b") == 0
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["losses"][-1] < 0.8 * stats["losses"][0]
    assert stats["heldout_images"] == 16 and stats["train_images"] == 144 and stats["eval_split"] == "heldout"
    assert stats["adapted_accuracy"] > stats["nearest_baseline_accuracy"]
    assert stats["identity_accuracy"] > 3 / 16  # well above chance (16 codes) after a few seconds on 144 images
    for name in ("adapter.safetensors", "config.json"):
        a, b = (tmp_path / d / name for d in "ab")
        if name == "config.json":  # wall_s differs
            strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "stats"}  # noqa: E731
            assert strip(a) == strip(b)
        else:
            assert a.read_bytes() == b.read_bytes()
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["tokenizer"]["codebook_shape"] == [16, 4] and config["grid"] == [4, 4] and config["stats"]["losses"]
    loaded = load_adapter(tmp_path / "a")
    assert loaded.codebook.shape == (16, 4)
    assert stage(digits, tmp_path / "c", "--seed", "1") == 0
    assert (tmp_path / "c" / "adapter.safetensors").read_bytes() != (tmp_path / "a" / "adapter.safetensors").read_bytes()


def test_stage_errors_are_one_line(digits, tmp_path, capsys):
    assert stage(digits, tmp_path / "x", "--tokenizer", str(tmp_path / "missing")) == 2
    assert stage(digits, tmp_path / "y", "--width", "10") == 2
    assert stage(digits, tmp_path / "z", "--identity-p", "1.0") == 2
    other = tmp_path / "other"  # a tokenizer for 16x16 images
    other.mkdir()
    save_tokenizer(build_model(make_config((16, 16), 1, 2, 16, 4, 8, 0)), other)
    assert stage(digits, tmp_path / "w", "--tokenizer", str(other)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("tokenforge tokenadapt: error: ") for line in err)
    assert "missing/config.json: no such file" in err[0] and "--width 10: must be a multiple of 4" in err[1]
    assert "--identity-p 1.0" in err[2] and "tokenizer expects (16, 16, 1) images" in err[3]
    assert not any((tmp_path / d).exists() for d in "xyzw")
