"""Tests of the shard stage: tar shards, index, stats, determinism, load_split and every bad input."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.images import fake_cifar10, fake_cifar100, make_imagefolder
from PIL import Image

from tokenforge import cli
from tokenforge.data.shards import (
    load_split,
    prepare_image,
    split_of,
    stratified_test_mask,
)
from tokenforge.data.sources import open_source
from tokenforge.errors import TokenforgeError

SHAPES = ["--source", "shapes", "--shapes-count", "40", "--shapes-classes", "4", "--shapes-size", "16"]


@pytest.fixture
def main(monkeypatch):
    """cli.main with only this stage registered, so these tests do not depend on other stages."""
    monkeypatch.setattr(cli, "STAGES", ("shard",))
    return lambda *argv: cli.main(["shard", *map(str, argv), "-q"])


def sha256s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_error(main, capsys, tmp_path: Path, argv: list, message: str) -> None:
    """The run fails with status 2, one stderr line containing `message`, and leaves nothing."""
    out = tmp_path / "out"
    assert main(*argv, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tokenforge shard: error: ") and message in err[-1], err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --- the stage end to end -----------------------------------------------------------------------


def test_shapes_outputs(main, tmp_path):
    out = tmp_path / "shard"
    assert main(*SHAPES, "--shard-size", "12", "--out", out) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == [
        "test-000000.tar",
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    classes = json.loads((out / "classes.json").read_text())
    assert classes == ["red-circle", "green-square", "blue-triangle", "yellow-diamond"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"] == {"train": 32, "test": 8}
    assert stats["image_size"] == [16, 16] and stats["channels"] == 3 and stats["num_classes"] == 4
    assert stats["raw_bytes_per_image"] == 16 * 16 * 3 and stats["source"] == "shapes"
    assert stats["wall_s"] > 0 and 0 < stats["png_bytes_per_image"] < stats["shard_bytes_per_image"]
    tar_bytes = sum(p.stat().st_size for p in out.glob("*.tar"))
    assert stats["shard_bytes_per_image"] == pytest.approx(tar_bytes / 40, abs=1e-3)

    index = pq.read_table(out / "index.parquet")
    assert index.schema.names == ["key", "label", "class_name", "split", "shard", "bytes"]
    assert [index.schema.field(n).type for n in ("label", "bytes")] == [pa.int32(), pa.int64()]
    rows = index.to_pylist()
    assert [r["split"] for r in rows].count("test") == 8
    assert rows[0]["key"] == "train_000000" and rows[12]["shard"] == "train-000001.tar"
    assert all("." not in r["key"] for r in rows)
    assert stats["png_bytes_per_image"] == pytest.approx(sum(r["bytes"] for r in rows) / 40, abs=1e-3)
    # each class keeps 8 train + 2 test
    for label in range(4):
        assert sum(r["label"] == label and r["split"] == "test" for r in rows) == 2

    with tarfile.open(out / "train-000000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:3]] == ["train_000000.cls", "train_000000.json", "train_000000.png"]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "tokenforge", "tokenforge")}
        meta = json.loads(tar.extractfile(members[1]).read())
        assert meta == {"label": rows[0]["label"], "class_name": rows[0]["class_name"], "source_id": "shapes/0/0"}


def test_deterministic_bytes(main, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(*SHAPES, "--shard-size", "15", "--out", a) == 0
    assert main(*SHAPES, "--shard-size", "15", "--out", b) == 0
    ha, hb = sha256s(a), sha256s(b)
    # stats.json holds the wall time; everything else must be byte-identical
    assert {k: v for k, v in ha.items() if k != "stats.json"} == {k: v for k, v in hb.items() if k != "stats.json"}
    sa, sb = (json.loads((d / "stats.json").read_text()) for d in (a, b))
    for stats in (sa, sb):
        stats.pop("wall_s"), stats.pop("resources")
    assert sa == sb
    c = tmp_path / "c"
    assert main(*SHAPES, "--shard-size", "15", "--seed", "1", "--out", c) == 0
    assert sha256s(c)["train-000000.tar"] != ha["train-000000.tar"]


def test_rerun_replaces_own_output(main, tmp_path):
    out = tmp_path / "shard"
    assert main(*SHAPES, "--out", out) == 0
    assert main(*SHAPES, "--test-fraction", "0.5", "--out", out) == 0
    assert json.loads((out / "stats.json").read_text())["counts"] == {"train": 20, "test": 20}


def test_load_split_round_trip(main, tmp_path):
    out = tmp_path / "shard"
    assert main(*SHAPES, "--shard-size", "7", "--out", out) == 0
    source = open_source("shapes", seed=0, shapes_count=40, shapes_classes=4, shapes_size=16)
    splits = split_of(source, 0.2, 0)
    for split in ("train", "test"):
        loaded = load_split(out, split)
        members = np.flatnonzero(splits == split)
        assert loaded.keys == [f"{split}_{j:06d}" for j in range(len(members))]
        assert loaded.images.shape == (len(members), 16, 16, 3) and loaded.images.dtype == np.uint8
        assert loaded.labels.dtype == np.int64
        np.testing.assert_array_equal(loaded.labels, source.labels[members])
        expected = np.stack([np.asarray(source.image(int(i))) for i in members])
        np.testing.assert_array_equal(loaded.images, expected)
        assert loaded.class_names == source.class_names


def test_digits_grayscale_and_resize(main, tmp_path):
    out = tmp_path / "digits"
    assert main("--source", "digits", "--image-size", "4", "--shard-size", "2000", "--out", out) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["channels"] == 1 and stats["image_size"] == [4, 4] and stats["raw_bytes_per_image"] == 16
    assert sum(stats["counts"].values()) == 1797
    test = load_split(out, "test")
    assert test.images.shape == (stats["counts"]["test"], 4, 4, 1)
    assert np.bincount(test.labels, minlength=10).min() > 0


def test_channels_option(main, tmp_path):
    out = tmp_path / "gray"
    assert main(*SHAPES, "--channels", "1", "--out", out) == 0
    assert load_split(out, "train").images.shape[1:] == (16, 16, 1)


def test_imagefolder_with_split(main, tmp_path):
    root = tmp_path / "data"
    make_imagefolder(root / "train", {"a": 3, "b": 2}, size=(12, 10))
    make_imagefolder(root / "test", {"a": 1, "b": 1}, size=(12, 10), seed=1)
    out = tmp_path / "shard"
    assert main("--source", f"imagefolder:{root}", "--out", out) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"] == {"train": 5, "test": 2} and stats["image_size"] == [10, 12]
    assert stats["split_from"] == "source"
    test = load_split(out, "test")
    np.testing.assert_array_equal(test.images[1], np.asarray(Image.open(root / "test" / "b" / "img0.png")))


def test_imagefolder_mixed_sizes_need_image_size(main, tmp_path, capsys):
    root = make_imagefolder(tmp_path / "data", {"a": 2}, size=(12, 10))
    make_imagefolder(root, {"b": 2}, size=(20, 16))
    assert_error(main, capsys, tmp_path, ["--source", f"imagefolder:{root}"], "pass --image-size")
    out = tmp_path / "resized"
    assert main("--source", f"imagefolder:{root}", "--image-size", "8", "--out", out) == 0
    assert load_split(out, "train").images.shape[1:] == (8, 8, 3)


@pytest.mark.parametrize("make, n", [(fake_cifar10, 24), (fake_cifar100, 9)])
def test_cifar(main, tmp_path, make, n):
    folder = make(tmp_path)
    out = tmp_path / "shard"
    assert main("--source", f"cifar:{folder}", "--out", out) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert sum(stats["counts"].values()) == n and stats["image_size"] == [32, 32]
    source = open_source(f"cifar:{folder}")
    test = load_split(out, "test")
    first_test = source.splits.index("test")
    np.testing.assert_array_equal(test.images[0], np.asarray(source.image(first_test)))


# --- units ------------------------------------------------------------------------------------


def test_stratified_split():
    labels = np.repeat(np.arange(5), [10, 1, 2, 3, 7])
    mask = stratified_test_mask(labels, 0.3, seed=0)
    assert [int(mask[labels == c].sum()) for c in range(5)] == [3, 0, 1, 1, 2]
    assert all((~mask[labels == c]).sum() >= 1 for c in range(5))
    np.testing.assert_array_equal(mask, stratified_test_mask(labels, 0.3, seed=0))
    assert not np.array_equal(mask, stratified_test_mask(labels, 0.3, seed=1))
    assert not stratified_test_mask(labels, 0.0, seed=0).any()
    # a class's split does not depend on the other classes
    np.testing.assert_array_equal(stratified_test_mask(labels[:10], 0.3, seed=0), mask[:10])


def test_prepare_image_centre_crop():
    pixels = np.zeros((20, 40), dtype=np.uint8)
    pixels[:, 10:30] = 255  # the centre square is white
    img = prepare_image(Image.fromarray(pixels), "RGB", 10)
    assert img.size == (10, 10) and img.mode == "RGB"
    assert np.asarray(img).min() == 255
    assert prepare_image(Image.fromarray(pixels), "L", None).size == (40, 20)


# --- bad input --------------------------------------------------------------------------------


def test_error_unknown_source(main, tmp_path, capsys):
    assert_error(main, capsys, tmp_path, ["--source", "xyz"], "source 'xyz': unknown source; expected")


def test_error_missing_path(main, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert_error(main, capsys, tmp_path, ["--source", f"imagefolder:{missing}"], f"{missing}: no such directory")
    assert_error(main, capsys, tmp_path, ["--source", f"cifar:{missing}"], f"{missing}: no such directory")


def test_error_corrupt_image(main, tmp_path, capsys):
    root = make_imagefolder(tmp_path / "data", {"a": 2, "b": 2})
    (root / "b" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad = root / "b" / "img1.png"
    assert_error(main, capsys, tmp_path, ["--source", f"imagefolder:{root}"], f"{bad}: cannot read image (")


def test_error_empty_class(main, tmp_path, capsys):
    root = make_imagefolder(tmp_path / "data", {"a": 2})
    (root / "b").mkdir()
    assert_error(main, capsys, tmp_path, ["--source", f"imagefolder:{root}"], f"{root / 'b'}: class has no images")


def test_error_zero_images(main, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_error(main, capsys, tmp_path, ["--source", f"imagefolder:{tmp_path / 'empty'}"], "no images")
    assert_error(main, capsys, tmp_path, ["--source", "shapes", "--shapes-count", "0"], "source 'shapes': no images")


@pytest.mark.parametrize("fraction", ["1", "1.5", "-0.1", "nan"])
def test_error_test_fraction(main, tmp_path, capsys, fraction):
    assert_error(main, capsys, tmp_path, [*SHAPES, "--test-fraction", fraction], f"--test-fraction {float(fraction)}")


def test_error_malicious_cifar(main, tmp_path, capsys):
    folder = fake_cifar10(tmp_path)
    with open(folder / "batches.meta", "wb") as f:
        f.write(b"cos\nsystem\n(S'true'\ntR.")  # protocol 0: os.system('true')
    assert_error(main, capsys, tmp_path, ["--source", f"cifar:{folder}"], "refusing to unpickle global 'os.system'")


def test_error_not_our_directory(main, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(*SHAPES, "--out", out) == 2
    assert "was not made by tokenforge" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


# --- load_split errors ------------------------------------------------------------------------


def test_load_split_errors(main, tmp_path):
    with pytest.raises(TokenforgeError, match="shard directory not found"):
        load_split(tmp_path / "missing", "train")
    out = tmp_path / "shard"
    assert main(*SHAPES, "--test-fraction", "0", "--out", out) == 0
    with pytest.raises(TokenforgeError, match=r"no test shards \(test-\*\.tar\)"):
        load_split(out, "test")


def _rewrite_tar(path: Path, corrupt_member: str) -> None:
    """Rewrite a tar with the PNG bytes of one member replaced by garbage."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            if member.name == corrupt_member:
                data = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_load_split_corrupt_sample_fails(main, tmp_path):
    out = tmp_path / "shard"
    assert main(*SHAPES, "--shard-size", "10", "--out", out) == 0
    bad = out / "train-000001.tar"
    _rewrite_tar(bad, "train_000013.png")
    with pytest.raises(TokenforgeError) as err:
        load_split(out, "train")
    assert str(err.value).startswith(f"{bad}: corrupt sample train_000013")


def test_load_split_truncated_tar_fails(main, tmp_path):
    out = tmp_path / "shard"
    assert main(*SHAPES, "--out", out) == 0
    bad = out / "test-000000.tar"
    bad.write_bytes(bad.read_bytes()[:3000])
    with pytest.raises(TokenforgeError) as err:
        load_split(out, "test")
    assert str(err.value).startswith(f"{bad}: corrupt")


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_parts_write_what_one_job_writes(main, tmp_path, parts):
    """P jobs over slices of the source, gathered, give the same tars (byte for byte), index and stats as one job."""
    one, many = tmp_path / "one", tmp_path / "many"
    assert main(*SHAPES, "--shard-size", "15", "--out", one) == 0
    for k in range(parts):
        assert main(*SHAPES, "--shard-size", "15", "--parts", str(parts), "--part", str(k), "--out", many / f"part-{k:03d}") == 0
    assert main(*SHAPES, "--parts", str(parts), "--gather", "--out", many) == 0
    tars_one = {p.name: p.read_bytes() for p in one.glob("*.tar")}
    tars_many = {p.name: p.read_bytes() for p in many.glob("part-*/*.tar")}
    assert tars_one == tars_many
    a, b = pq.read_table(one / "index.parquet").to_pylist(), pq.read_table(many / "index.parquet").to_pylist()
    assert [r["shard"] for r in a] == [r["shard"].split("/", 1)[1] for r in b]
    assert [{**r, "shard": 0} for r in a] == [{**r, "shard": 0} for r in b]
    sa, sb = (json.loads((d / "stats.json").read_text()) for d in (one, many))
    for stats in (sa, sb):
        stats.pop("wall_s"), stats.pop("resources")
    assert sb.pop("parts") == parts and len(sb.pop("part_resources")) == parts and sa == sb
    for split in ("train", "test"):
        x, y = load_split(one, split), load_split(many, split)
        assert x.keys == y.keys and np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels)


def test_parts_bad_flags(main, tmp_path, capsys):
    assert main(*SHAPES, "--parts", "2", "--out", tmp_path / "x") == 2
    assert "--parts 2: pass --part K (0..1), or --gather" in capsys.readouterr().err
    assert main(*SHAPES, "--parts", "2", "--part", "2", "--out", tmp_path / "x") == 2
    assert "--part 2: must be in 0..1 for --parts 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
