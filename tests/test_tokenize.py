"""Token parquet files: layout, round trip, bad files, and `tokenforge tokenize`."""

import importlib
import json
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenforge import cli, tokenizer
from tokenforge.errors import TokenforgeError
from tokenforge.tokenize import TokenSet, id_type, load_tokens, save_tokens, tokens_table


def token_set(n: int, num_codes: int, grid=(2, 3), seed=0) -> TokenSet:
    rng = np.random.default_rng(seed)
    return TokenSet(
        keys=[f"k{i}" for i in range(n)],
        labels=rng.integers(0, 5, n).astype(np.int64),
        ids=rng.integers(0, num_codes, (n, *grid)).astype(np.int64),
    )


@pytest.mark.parametrize("num_codes, kind", [(16, pa.uint8()), (256, pa.uint8()), (300, pa.uint16())])
def test_round_trip(tmp_path, num_codes, kind):
    tokens = token_set(7, num_codes)
    tokens.ids[0, 0, 0] = num_codes - 1
    path = tmp_path / "t.parquet"
    save_tokens(path, tokens, num_codes)
    schema = pq.read_schema(path)
    assert schema.field("ids").type == pa.list_(kind, 6)  # fixed-size list of h*w ids
    assert schema.field("label").type == pa.int32() and schema.field("key").type == pa.string()
    assert schema.metadata[b"grid"] == b"2,3" and schema.metadata[b"num_codes"] == str(num_codes).encode()
    assert pq.ParquetFile(path).metadata.row_group(0).column(2).compression == "ZSTD"
    back = load_tokens(path)
    assert back.keys == tokens.keys
    assert back.labels.dtype == np.int64 and np.array_equal(back.labels, tokens.labels)
    assert back.ids.dtype == np.int64 and np.array_equal(back.ids, tokens.ids)
    # row-major over the grid
    assert pq.read_table(path).column("ids")[0].as_py() == tokens.ids[0].ravel().tolist()


def test_empty_round_trip(tmp_path):
    tokens = TokenSet([], np.zeros(0, np.int64), np.zeros((0, 4, 4), np.int64))
    save_tokens(tmp_path / "e.parquet", tokens, 64)
    assert load_tokens(tmp_path / "e.parquet").ids.shape == (0, 4, 4)


def test_id_type():
    assert id_type(2) == pa.uint8() and id_type(256) == pa.uint8() and id_type(257) == pa.uint16()


def test_save_rejects_out_of_range():
    with pytest.raises(TokenforgeError, match=r"ids: values must lie in \[0, 4\)"):
        tokens_table(token_set(3, 8), 4)


def test_load_errors(tmp_path):
    path = tmp_path / "bad.parquet"
    with pytest.raises(TokenforgeError, match="bad.parquet: token file not found"):
        load_tokens(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(TokenforgeError, match="bad.parquet: not a readable parquet file"):
        load_tokens(path)
    table = tokens_table(token_set(3, 8), 8)
    pq.write_table(table.drop_columns(["label"]), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: missing column.s. label"):
        load_tokens(path)
    pq.write_table(table.replace_schema_metadata({}), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: schema metadata needs grid"):
        load_tokens(path)
    pq.write_table(table.replace_schema_metadata({b"grid": b"2,3", b"num_codes": b"4"}), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: ids out of range for 4 codes"):
        load_tokens(path)
    pq.write_table(table.replace_schema_metadata({b"grid": b"3,3"}), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: column ids must be a fixed-size list of 3.3 ids"):
        load_tokens(path)


# ------------------------------------------------------------------------------------------ CLI


def patterns(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:8, :8]
    shapes = [(yy // 2) % 2, (xx // 2) % 2, (yy < 4).astype(int)]
    return np.stack([shapes[rng.integers(3)] * rng.integers(128, 256) for _ in range(n)]).astype(np.uint8)[..., None]


def image_set(n: int, seed: int) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        keys=[f"s{seed}-{i}" for i in range(n)], labels=np.arange(n, dtype=np.int64) % 2,
        images=patterns(n, seed), class_names=["a", "b"],
    )


@pytest.fixture
def shards(monkeypatch, tmp_path):
    """A shard dir (stats.json only) whose splits tokenforge.shard.load_split serves from memory."""
    splits = {"train": image_set(20, 1), "test": image_set(7, 2)}
    try:
        shard = importlib.import_module("tokenforge.shard")
    except ImportError:  # written in parallel; stand in for it
        shard = types.ModuleType("tokenforge.shard")
        monkeypatch.setitem(sys.modules, "tokenforge.shard", shard)
    monkeypatch.setattr(shard, "load_split", lambda shard_dir, split: splits[split], raising=False)
    path = tmp_path / "shard"
    path.mkdir()
    stats = {"image_size": [8, 8], "channels": 1, "raw_bytes_per_image": 64, "shard_bytes_per_image": 600.0,
             "png_bytes_per_image": 90.0, "counts": {"train": 20, "test": 7}}
    (path / "stats.json").write_text(json.dumps(stats))
    return path, splits


@pytest.fixture
def tok_dir(tmp_path):
    config = tokenizer.make_config((8, 8), 1, downsample=2, codebook_size=16, code_dim=4, hidden_dim=8, seed=0)
    model, _ = tokenizer.train_tokenizer(patterns(32), config, epochs=1, batch_size=16, lr=5e-3)
    path = tmp_path / "tokenizer"
    path.mkdir()
    tokenizer.save_tokenizer(model, path)
    return path


@pytest.fixture
def tokenforge(monkeypatch):
    monkeypatch.setattr(cli, "STAGES", ("tokenize",))
    return cli.main


def test_cli_tokenize(tokenforge, shards, tok_dir, tmp_path):
    shard_dir, splits = shards
    out = tmp_path / "tokens"
    args = ["tokenize", "--shards", str(shard_dir), "--tokenizer", str(tok_dir), "--out", str(out), "-q"]
    assert tokenforge([*args, "--batch-size", "8"]) == 0
    model = tokenizer.load_tokenizer(tok_dir)
    for split, data in splits.items():
        tokens = load_tokens(out / f"{split}.parquet")
        assert tokens.keys == data.keys and np.array_equal(tokens.labels, data.labels)
        assert np.array_equal(tokens.ids, model.encode(data.images).numpy())
    assert json.loads((out / "tokenizer.json").read_text()) == model.config
    stats = json.loads((out / "stats.json").read_text())
    assert stats["grid"] == [4, 4] and stats["num_codes"] == 16 and stats["counts"] == {"train": 20, "test": 7}
    sizes = sum((out / f"{s}.parquet").stat().st_size for s in ("train", "test"))
    assert stats["bytes_per_image"] == {
        "raw_pixels": 64, "pixel_shards": 600.0, "tokens": pytest.approx(sizes / 27), "token_ids_raw": 16,
    }
    assert stats["wall_s"] > 0
    # deterministic: a second run writes the same token files
    first = [(out / f"{s}.parquet").read_bytes() for s in ("train", "test")]
    assert tokenforge(args) == 0
    assert first == [(out / f"{s}.parquet").read_bytes() for s in ("train", "test")]


def test_cli_image_size_mismatch(tokenforge, shards, tok_dir, tmp_path, capsys):
    shard_dir, splits = shards
    splits["train"].images = np.zeros((3, 16, 16, 1), np.uint8)
    out = tmp_path / "tokens"
    rc = tokenforge(["tokenize", "--shards", str(shard_dir), "--tokenizer", str(tok_dir), "--out", str(out), "-q"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tokenforge tokenize: error: {tok_dir / 'config.json'}: tokenizer expects (8, 8, 1) images")
    assert not out.exists()


def test_cli_missing_tokenizer(tokenforge, shards, tmp_path, capsys):
    shard_dir, _ = shards
    rc = tokenforge(["tokenize", "--shards", str(shard_dir), "--tokenizer", str(tmp_path / "nope"),
                     "--out", str(tmp_path / "tokens"), "-q"])
    assert rc == 2
    missing = tmp_path / "nope" / "config.json"
    assert capsys.readouterr().err.strip() == f"tokenforge tokenize: error: {missing}: no such file"


def test_cli_shard_stats_missing_key(tokenforge, shards, tok_dir, tmp_path, capsys):
    shard_dir, _ = shards
    (shard_dir / "stats.json").write_text(json.dumps({"raw_bytes_per_image": 64}))
    out = tmp_path / "t"
    rc = tokenforge(["tokenize", "--shards", str(shard_dir), "--tokenizer", str(tok_dir), "--out", str(out), "-q"])
    assert rc == 2
    assert capsys.readouterr().err.strip().endswith("stats.json: missing key shard_bytes_per_image")
