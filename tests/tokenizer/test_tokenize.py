"""Token parquet files: bit packing, layout, round trip, the earlier layout, bad files, and `tokenforge tokenize`."""

import json
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenforge import cli
from tokenforge.data import shards as shards_module
from tokenforge.data.tokens import (
    TokenSet,
    id_bits,
    load_tokens,
    pack_ids,
    packed_size,
    read_throughput,
    save_tokens,
    tokens_table,
    unpack_ids,
)
from tokenforge.errors import TokenforgeError
from tokenforge.tokenizer import vq as tokenizer


def token_set(n: int, num_codes: int, grid=(2, 3), seed=0) -> TokenSet:
    rng = np.random.default_rng(seed)
    return TokenSet(
        keys=[f"k{i}" for i in range(n)],
        labels=rng.integers(0, 5, n).astype(np.int64),
        ids=rng.integers(0, num_codes, (n, *grid)).astype(np.int64),
    )


# ------------------------------------------------------------------------------------------ bit packing


@pytest.mark.parametrize("num_codes, bits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (64, 6), (65, 7), (391, 9),
                                             (512, 9), (513, 10), (65536, 16)])
def test_id_bits(num_codes, bits):
    assert id_bits(num_codes) == bits


@pytest.mark.parametrize("num_codes", [0, 65537])
def test_id_bits_out_of_range(num_codes):
    with pytest.raises(TokenforgeError, match=f"num_codes {num_codes}: must be between 1 and 65536"):
        id_bits(num_codes)


def test_packed_size():
    assert packed_size(16, 6) == 12 and packed_size(15, 9) == 17 and packed_size(1024, 9) == 1152
    assert packed_size(1, 1) == 1 and packed_size(0, 5) == 0 and packed_size(3, 16) == 6


def test_bit_order_is_little_endian_stream():
    # 1 | 2 << 9 | 3 << 18 = 0b11_000000010_000000001, bytes lowest first
    assert pack_ids(np.array([[1, 2, 3]]), 9).tolist() == [[0x01, 0x04, 0x0C, 0x00]]
    assert pack_ids(np.array([[1, 0, 1, 1, 0, 0, 0, 0, 1]]), 1).tolist() == [[0b00001101, 0b1]]
    assert pack_ids(np.array([[0x1234, 0xFFFF]]), 16).tolist() == [[0x34, 0x12, 0xFF, 0xFF]]


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("tokens", [1, 7, 15, 16])
def test_pack_unpack_round_trip(bits, tokens):
    rng = np.random.default_rng(bits * 100 + tokens)
    ids = rng.integers(0, 1 << bits, (9, tokens))
    ids[0] = (1 << bits) - 1  # every bit set: nothing may spill into the neighbour
    ids[1] = 0
    packed = pack_ids(ids, bits)
    assert packed.dtype == np.uint8 and packed.shape == (9, packed_size(tokens, bits))
    back = unpack_ids(packed, tokens, bits)
    assert back.dtype == np.int64 and np.array_equal(back, ids)


def test_pack_in_row_blocks(monkeypatch):
    # Many rows go through in blocks (CHUNK_ELEMENTS bounds the temporaries); the blocks must line up.
    monkeypatch.setattr("tokenforge.data.tokens.CHUNK_ELEMENTS", 50)
    ids = np.random.default_rng(0).integers(0, 512, (23, 15))
    assert np.array_equal(unpack_ids(pack_ids(ids, 9), 15, 9), ids)


# ------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("bits", range(1, 17))
def test_round_trip_every_width(tmp_path, bits):
    # Full codebooks (even widths) and pruned ones just above a power of two (odd widths), on a grid whose
    # bits do not fill whole bytes (3x5).
    num_codes = 1 << bits if bits % 2 == 0 else (1 << (bits - 1)) + 1
    assert id_bits(num_codes) == bits
    tokens = token_set(11, num_codes, grid=(3, 5), seed=bits)
    tokens.ids[0, 0, 0], tokens.ids[0, 2, 4] = num_codes - 1, 0
    path = tmp_path / "t.parquet"
    save_tokens(path, tokens, num_codes)
    schema = pq.read_schema(path)
    assert schema.field("ids").type == pa.binary(packed_size(15, bits))
    assert schema.metadata[b"grid"] == b"3,5" and schema.metadata[b"num_codes"] == str(num_codes).encode()
    assert schema.metadata[b"bits"] == str(bits).encode()
    back = load_tokens(path)
    assert back.keys == tokens.keys
    assert back.labels.dtype == np.int64 and np.array_equal(back.labels, tokens.labels)
    assert back.ids.dtype == np.int64 and back.ids.shape == (11, 3, 5) and np.array_equal(back.ids, tokens.ids)


def test_layout(tmp_path):
    tokens = token_set(7, 300)
    path = tmp_path / "t.parquet"
    save_tokens(path, tokens, 300)
    schema = pq.read_schema(path)
    assert schema.field("label").type == pa.int32() and schema.field("key").type == pa.string()
    columns = pq.ParquetFile(path).metadata.row_group(0)
    assert all(columns.column(i).compression == "ZSTD" for i in range(3))
    assert "DELTA_BYTE_ARRAY" in columns.column(0).encodings  # sorted keys share prefixes
    assert columns.column(2).statistics is None  # min/max of packed bytes would only cost space
    # each row is the packed, row-major grid
    row = pq.read_table(path).column("ids")[2].as_py()
    assert row == pack_ids(tokens.ids[2].reshape(1, -1), 9)[0].tobytes()


def test_empty_round_trip(tmp_path):
    tokens = TokenSet([], np.zeros(0, np.int64), np.zeros((0, 4, 4), np.int64))
    save_tokens(tmp_path / "e.parquet", tokens, 64)
    back = load_tokens(tmp_path / "e.parquet")
    assert back.ids.shape == (0, 4, 4) and back.ids.dtype == np.int64 and back.keys == []


def legacy_table(tokens: TokenSet, num_codes: int) -> pa.Table:
    """The layout written before packing: ids as a fixed-size list of uint8 (uint16 above 256 codes)."""
    n, h, w = tokens.ids.shape
    kind = pa.uint8() if num_codes <= 256 else pa.uint16()
    flat = pa.array(tokens.ids.reshape(-1).astype(kind.to_pandas_dtype()), type=kind)
    table = pa.table({"key": pa.array(tokens.keys), "label": pa.array(tokens.labels.astype(np.int32)),
                      "ids": pa.FixedSizeListArray.from_arrays(flat, h * w)})
    return table.replace_schema_metadata({b"grid": f"{h},{w}".encode(), b"num_codes": str(num_codes).encode()})


@pytest.mark.parametrize("num_codes", [16, 300])
def test_reads_the_earlier_layout(tmp_path, num_codes):
    tokens = token_set(5, num_codes)
    pq.write_table(legacy_table(tokens, num_codes), tmp_path / "old.parquet", compression="zstd")
    back = load_tokens(tmp_path / "old.parquet")
    assert back.keys == tokens.keys and np.array_equal(back.labels, tokens.labels)
    assert back.ids.dtype == np.int64 and np.array_equal(back.ids, tokens.ids)


def test_save_rejects_bad_ids():
    with pytest.raises(TokenforgeError, match=r"ids: values must lie in \[0, 4\)"):
        tokens_table(token_set(3, 8), 4)
    bad = token_set(3, 8)
    bad.ids[1, 0, 0] = -1
    with pytest.raises(TokenforgeError, match=r"ids: values must lie in \[0, 8\)"):
        tokens_table(bad, 8)
    with pytest.raises(TokenforgeError, match=r"ids: expected \(N, h, w\) token grids"):
        tokens_table(TokenSet(["a"], np.zeros(1), np.zeros((1, 4))), 8)
    with pytest.raises(TokenforgeError, match="tokens: 3 keys and 2 labels for 3 grids"):
        tokens_table(TokenSet(["a", "b", "c"], np.zeros(2), np.zeros((3, 2, 2), np.int64)), 8)
    with pytest.raises(TokenforgeError, match="num_codes 70000"):
        tokens_table(token_set(3, 8), 70000)


def test_load_errors(tmp_path):
    path = tmp_path / "bad.parquet"
    with pytest.raises(TokenforgeError, match="bad.parquet: token file not found"):
        load_tokens(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(TokenforgeError, match="bad.parquet: not a readable parquet file"):
        load_tokens(path)
    table = tokens_table(token_set(3, 8), 8)
    meta = table.schema.metadata
    pq.write_table(table.drop_columns(["label"]), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: missing column.s. label"):
        load_tokens(path)
    pq.write_table(table.replace_schema_metadata({}), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: schema metadata needs grid"):
        load_tokens(path)
    pq.write_table(table.replace_schema_metadata({b"grid": b"2,3", b"num_codes": b"8"}), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: packed ids need bits and num_codes"):
        load_tokens(path)
    pq.write_table(table.replace_schema_metadata({**meta, b"grid": b"3,3"}), path)
    with pytest.raises(TokenforgeError, match="column ids holds 3 bytes per image, 9 ids of 3 bits need 4"):
        load_tokens(path)
    pq.write_table(table.replace_schema_metadata({**meta, b"num_codes": b"9"}), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: bits 3 cannot hold 9 codes"):
        load_tokens(path)
    pq.write_table(table.replace_schema_metadata({**meta, b"num_codes": b"5"}), path)  # 3 bits hold up to 7
    with pytest.raises(TokenforgeError, match="bad.parquet: ids out of range for 5 codes"):
        load_tokens(path)
    pq.write_table(table.set_column(2, "ids", pa.array([1, 2, 3], pa.int64())), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: column ids must be packed fixed-size binary or a fixed"):
        load_tokens(path)
    legacy = legacy_table(token_set(3, 8), 8)
    pq.write_table(legacy.replace_schema_metadata({b"grid": b"3,3"}), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: column ids must be .* a fixed-size list of 3.3 ids"):
        load_tokens(path)
    nulls = pa.array([b"abc", None, b"abc"], pa.binary(3))
    pq.write_table(table.set_column(2, "ids", nulls).replace_schema_metadata(meta), path)
    with pytest.raises(TokenforgeError, match="bad.parquet: column ids has 1 null row"):
        load_tokens(path)


def test_read_throughput(tmp_path):
    save_tokens(tmp_path / "t.parquet", token_set(50, 391), 391)
    assert read_throughput(tmp_path / "t.parquet", repeats=2) > 0
    with pytest.raises(TokenforgeError, match="repeats 0: must be at least 1"):
        read_throughput(tmp_path / "t.parquet", repeats=0)


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
    """A shard dir (stats.json only) whose splits tokenforge.data.shards.iter_split serves from memory."""
    splits = {"train": image_set(20, 1), "test": image_set(7, 2)}

    def iter_split(shard_dir, split, batch_size, keep=None, part=None, tars=None, per_tar=False):
        data = splits[split]
        for i in range(0, len(data.keys), batch_size):
            yield types.SimpleNamespace(
                keys=data.keys[i : i + batch_size], labels=data.labels[i : i + batch_size],
                images=data.images[i : i + batch_size], texts=None,
            )

    monkeypatch.setattr(shards_module, "iter_split", iter_split)
    path = tmp_path / "shard"
    path.mkdir()
    stats = {"image_size": [8, 8], "channels": 1, "raw_bytes_per_image": 64, "shard_bytes_per_image": 600.0,
             "png_bytes_per_image": 90.0, "counts": {"train": 20, "test": 7}}
    (path / "stats.json").write_text(json.dumps(stats))
    return path, splits


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
    assert stats["grid"] == [4, 4] and stats["num_codes"] == 16 and stats["bits"] == 4
    assert stats["counts"] == {"train": 20, "test": 7}
    sizes = sum((out / f"{s}.parquet").stat().st_size for s in ("train", "test"))
    assert stats["bytes_per_image"] == {
        "raw_pixels": 64, "pixel_shards": 600.0, "tokens": pytest.approx(sizes / 27), "token_ids_raw": 8,
    }
    assert stats["wall_s"] > 0 and stats["resources"]["peak_rss_mb"] > 0
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
