"""Tests of the idx:PATH source (MNIST-format IDX files, tiny ones written here) and of --max-per-class."""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from helpers.pipeline import REPO

from tokenforge import cli
from tokenforge.cli.shard import add_arguments
from tokenforge.data.sources import first_per_class, open_source
from tokenforge.data.sources.idx import read_idx
from tokenforge.errors import TokenforgeError

H, W = 4, 3  # not square, so a transposed read would show


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: 0, 0, 0x08, ndim, the sizes as big-endian uint32, the data."""
    array = np.asarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_file(path: Path, data: bytes) -> Path:
    """Write data, gzipped (with a fixed mtime) when the name ends in .gz."""
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def make_idx(
    root: Path, n_train=12, n_test=6, classes=3, test="t10k", prefix="", gz=(True, True), seed=0
) -> dict[str, np.ndarray]:
    """root/<prefix>train-{images,labels}-... and root/<prefix><test>-...; gz = (train gzipped, test gzipped).

    Labels cycle 0..classes-1 so every class is in both splits. Returns the arrays written.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, word, n, zipped in (("train", "train", n_train, gz[0]), ("test", test, n_test, gz[1])):
        images = rng.integers(0, 256, size=(n, H, W), dtype=np.uint8)
        labels = (np.arange(n) % classes).astype(np.uint8)
        ext = ".gz" if zipped else ""
        write_file(root / f"{prefix}{word}-images-idx3-ubyte{ext}", idx_bytes(images))
        write_file(root / f"{prefix}{word}-labels-idx1-ubyte{ext}", idx_bytes(labels))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def error_of(root: Path) -> str:
    with pytest.raises(TokenforgeError) as err:
        open_source(f"idx:{root}")
    message = str(err.value)
    assert "\n" not in message
    return message


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [(True, True), (False, False), (True, False)], ids=["gz", "plain", "mixed"])
def test_reads_a_folder(tmp_path, gz):
    arrays = make_idx(tmp_path / "fm", gz=gz)
    source = open_source(f"idx:{tmp_path / 'fm'}")
    assert len(source) == 18 and source.mode == "L" and source.spec == f"idx:{tmp_path / 'fm'}"
    assert source.splits == ["train"] * 12 + ["test"] * 6
    assert source.class_names == ["0", "1", "2"]
    assert source.labels.dtype == np.int64
    np.testing.assert_array_equal(source.labels, np.concatenate([arrays["train_labels"], arrays["test_labels"]]))
    assert source.ids[:2] == ["train/0", "train/1"] and source.ids[12:14] == ["t10k/0", "t10k/1"]
    for i, (split, k) in {0: ("train", 0), 11: ("train", 11), 12: ("test", 0), 17: ("test", 5)}.items():
        image = source.image(i)
        assert image.mode == "L" and image.size == (W, H)
        np.testing.assert_array_equal(np.asarray(image), arrays[f"{split}_images"][k])
    sample = source.sample(13)
    assert (sample.split, sample.source_id, sample.label) == ("test", "t10k/1", 1)


@pytest.mark.parametrize("test, prefix", [("test", ""), ("test", "emnist-balanced-"), ("t10k", "kmnist-")])
def test_test_and_prefixed_names(tmp_path, test, prefix):
    make_idx(tmp_path, n_train=3, n_test=2, test=test, prefix=prefix)
    source = open_source(f"idx:{tmp_path}")
    assert source.ids == [f"{prefix}train/{k}" for k in range(3)] + [f"{prefix}{test}/{k}" for k in range(2)]
    assert source.splits == ["train"] * 3 + ["test"] * 2


def test_class_names_up_to_the_largest_label(tmp_path):
    make_idx(tmp_path, n_train=2, n_test=1, classes=1)
    write_file(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes([4, 0]))  # no 1, 2 or 3
    assert open_source(f"idx:{tmp_path}").class_names == ["0", "1", "2", "3", "4"]


def test_classes_txt(tmp_path):
    make_idx(tmp_path)
    (tmp_path / "classes.txt").write_text("T-shirt/top\n Trouser \nPullover\nspare\n\n", encoding="utf-8")
    assert open_source(f"idx:{tmp_path}").class_names == ["T-shirt/top", "Trouser", "Pullover", "spare"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\nb\n", "2 class names, but the labels go up to 2"),
        ("a\n\nb\nc\n", "line 2 is empty"),
        ("a\nb\na\n", "class name 'a' appears twice"),
    ],
)
def test_bad_classes_txt(tmp_path, text, message):
    make_idx(tmp_path)
    (tmp_path / "classes.txt").write_text(text)
    found = error_of(tmp_path)
    assert found.startswith(f"{tmp_path / 'classes.txt'}: ") and message in found


def test_read_idx_is_the_array(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    np.testing.assert_array_equal(read_idx(write_file(tmp_path / "x.gz", idx_bytes(array)), 3), array)
    np.testing.assert_array_equal(read_idx(write_file(tmp_path / "x", idx_bytes(array)), 3), array)
    empty = read_idx(write_file(tmp_path / "e", idx_bytes(np.zeros((0, 28, 28)))), 3)
    assert empty.shape == (0, 28, 28)


# --- bad files --------------------------------------------------------------------------------

GOOD_IMAGES = idx_bytes(np.zeros((12, H, W)))
GOOD_LABELS = idx_bytes(np.arange(12) % 3)


@pytest.mark.parametrize(
    "name, data, message",
    [
        (
            "train-images-idx3-ubyte.gz",
            b"\x01\x00" + GOOD_IMAGES[2:],
            "bad IDX magic number 0x01000803, expected 0x00000803",
        ),
        (
            "train-images-idx3-ubyte.gz",
            GOOD_IMAGES[:2] + b"\x0d" + GOOD_IMAGES[3:],
            "magic number 0x00000d03, expected",
        ),
        ("train-images-idx3-ubyte.gz", GOOD_LABELS, "magic number 0x00000801, expected 0x00000803 (unsigned bytes, 3"),
        ("train-labels-idx1-ubyte.gz", GOOD_IMAGES, "magic number 0x00000803, expected 0x00000801 (unsigned bytes, 1"),
        (
            "train-images-idx3-ubyte.gz",
            GOOD_IMAGES[:-1],
            "truncated: the header says 12x4x3 = 144 bytes of data, found 143",
        ),
        ("train-images-idx3-ubyte.gz", GOOD_IMAGES + b"\0", "trailing bytes: the header says 12x4x3 = 144 bytes"),
        ("train-images-idx3-ubyte.gz", GOOD_IMAGES[:10], "truncated IDX header (10 bytes, expected 16)"),
        ("train-labels-idx1-ubyte.gz", GOOD_LABELS[:3], "truncated IDX header (3 bytes)"),
        ("train-labels-idx1-ubyte.gz", b"", "truncated IDX header (0 bytes)"),
    ],
    ids=[
        "zero-bytes",
        "type-code",
        "images-ndim",
        "labels-ndim",
        "truncated",
        "trailing",
        "header",
        "magic-cut",
        "empty",
    ],
)
def test_bad_idx_file(tmp_path, name, data, message):
    make_idx(tmp_path)
    path = write_file(tmp_path / name, data)
    found = error_of(tmp_path)
    assert found.startswith(f"{path}: ") and message in found, found


def test_gzip_data_in_a_plain_name(tmp_path):
    make_idx(tmp_path, gz=(False, False))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(gzip.compress(GOOD_LABELS))
    assert error_of(tmp_path).endswith("; gzip data in a file not named .gz")


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda gz: b"not gzip at all",
        lambda gz: gz[: len(gz) // 2],  # cut short: EOFError
        lambda gz: gz[:10] + b"\xff" * (len(gz) - 18) + gz[-8:],  # a broken deflate stream: zlib.error
        lambda gz: gz[:-8] + b"\0" * 8,  # wrong CRC and length
    ],
    ids=["not-gzip", "cut", "deflate", "crc"],
)
def test_corrupt_gzip(tmp_path, corrupt):
    make_idx(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(corrupt(path.read_bytes()))
    assert error_of(tmp_path).startswith(f"{path}: corrupt gzip file (")


def test_counts_differ(tmp_path):
    make_idx(tmp_path)
    write_file(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes([0, 1, 2, 0, 1]))
    images, labels = tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz"
    assert error_of(tmp_path) == f"{images}: 6 images, but {labels} has 5 labels"


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("train-images-idx3-ubyte.gz", "no train file matching *train-images-idx3-ubyte[.gz]"),
        (
            "t10k-labels-idx1-ubyte.gz",
            "no test file matching *t10k-labels-idx1-ubyte[.gz] or *test-labels-idx1-ubyte[.gz]",
        ),
    ],
)
def test_missing_file(tmp_path, name, pattern):
    make_idx(tmp_path)
    (tmp_path / name).unlink()
    (tmp_path / f".{name}").write_bytes(b"hidden files are not read")
    assert error_of(tmp_path) == f"{tmp_path}: {pattern}"


def test_more_than_one_file_for_a_role(tmp_path):
    make_idx(tmp_path)
    make_idx(tmp_path, prefix="emnist-letters-")
    assert error_of(tmp_path) == (
        f"{tmp_path}: 2 files match *train-images-idx3-ubyte[.gz]: emnist-letters-train-images-idx3-ubyte.gz, "
        "train-images-idx3-ubyte.gz (keep one dataset per folder)"
    )


def test_not_a_folder(tmp_path):
    assert error_of(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such directory"
    with pytest.raises(TokenforgeError, match="missing PATH after 'idx:'"):
        open_source("idx:")


# --- first_per_class ----------------------------------------------------------------------------


def test_first_per_class_per_split(tmp_path):
    make_idx(tmp_path, n_train=12, n_test=6)  # labels 0 1 2 0 1 2 ...
    source = open_source(f"idx:{tmp_path}")
    capped = first_per_class(source, 2)
    assert capped.ids == ["train/0", "train/1", "train/2", "train/3", "train/4", "train/5"] + [
        f"t10k/{k}" for k in range(6)
    ]
    assert capped.splits == ["train"] * 6 + ["test"] * 6 and capped.labels.tolist() == [0, 1, 2] * 4
    np.testing.assert_array_equal(np.asarray(capped.image(7)), np.asarray(source.image(13)))
    assert first_per_class(source, None) is source and len(first_per_class(source, 100)) == 18
    with pytest.raises(TokenforgeError, match=r"^--max-per-class 0: must be >= 1$"):
        first_per_class(source, 0)


def test_first_per_class_without_a_split():
    source = open_source("shapes", shapes_count=20, shapes_classes=4, shapes_size=8)  # label = i % 4
    capped = first_per_class(source, 3)
    assert capped.splits is None and capped.ids == [f"shapes/0/{i}" for i in range(12)]


# --- the shard stage ----------------------------------------------------------------------------


@pytest.fixture
def main(monkeypatch):
    """cli.main with only the shard stage registered, as tests/data/test_shard.py does."""
    monkeypatch.setattr(cli, "STAGES", ("shard",))
    return lambda *argv: cli.main(["shard", *map(str, argv), "-q"])


def tar_meta(out: Path) -> list[dict]:
    """The .json members of every shard, in file and member order."""
    found = []
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            found += [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
    return found


def test_shard_max_per_class(main, tmp_path):
    make_idx(tmp_path / "fm", n_train=12, n_test=9)
    (tmp_path / "fm" / "classes.txt").write_text("top\ntrouser\npullover\n")
    out = tmp_path / "shard"
    assert main("--source", f"idx:{tmp_path / 'fm'}", "--max-per-class", 2, "--out", out) == 0
    rows = pq.read_table(out / "index.parquet").to_pylist()
    for split in ("train", "test"):
        assert sorted(r["label"] for r in rows if r["split"] == split) == [0, 0, 1, 1, 2, 2]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"] == {"train": 6, "test": 6} and stats["max_per_class"] == 2
    assert stats["image_size"] == [H, W] and stats["channels"] == 1 and stats["split_from"] == "source"
    assert json.loads((out / "classes.json").read_text()) == ["top", "trouser", "pullover"]
    ids = [m["source_id"] for m in tar_meta(out)]
    assert sorted(ids) == sorted([f"train/{k}" for k in range(6)] + [f"t10k/{k}" for k in range(6)])


def test_shard_max_per_class_before_a_seeded_split(main, tmp_path):
    out = tmp_path / "shard"
    shapes = ["--source", "shapes", "--shapes-count", "40", "--shapes-classes", "4", "--shapes-size", "8"]
    assert main(*shapes, "--max-per-class", 5, "--out", out) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"] == {"train": 16, "test": 4}  # 5 per class, then 20 % of them held out
    assert sorted(int(m["source_id"].split("/")[-1]) for m in tar_meta(out)) == list(range(20))


def test_shard_bad_max_per_class(main, tmp_path, capsys):
    out = tmp_path / "out"
    assert main("--source", f"idx:{tmp_path / 'nope'}", "--max-per-class", 0, "--out", out) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--max-per-class 0: must be >= 1")
    assert not out.exists()


def test_every_shard_config_key_is_a_flag():
    """The workflow passes config["shard"] as --key-with-dashes flags (cli_args); each must exist."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = set(parser._option_string_actions)
    keys = set(schema["properties"]["shard"]["properties"]) | set(config["shard"])
    assert "max_per_class" in keys and "max_per_class" in config["shard"]
    assert {f"--{k.replace('_', '-')}" for k in keys} <= flags
