"""data/tokens.py, the read side at scale: record batch by record batch, only some classes or keys, narrow ids, and
`iter_tokens` batches; data/units.py on top of it."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tokenforge.data import tokens as tokens_module
from tokenforge.data.tokens import TokenSet, iter_tokens, load_tokens, narrow_dtype, save_tokens, tokens_table
from tokenforge.data.units import UnitBatches, class_examples, split_units, wide
from tokenforge.errors import TokenforgeError


def token_file(path, n=50, num_codes=391, grid=(3, 4), classes=5, texts=False, row_group=None):
    rng = np.random.default_rng(0)
    tokens = TokenSet(
        keys=[f"k{i:03d}" for i in range(n)],
        labels=rng.integers(0, classes, n).astype(np.int64),
        ids=rng.integers(0, num_codes, (n, *grid)).astype(np.int64),
        texts=[{"caption": f"image {i}"} for i in range(n)] if texts else None,
    )
    tokens.ids[0, 0, 0] = num_codes - 1
    if row_group is None:
        save_tokens(path, tokens, num_codes)
    else:  # several row groups, as a streamed writer makes them
        pq.write_table(tokens_table(tokens, num_codes), path, row_group_size=row_group)
    return tokens


@pytest.fixture
def small_batches(monkeypatch):
    """Record batches of 7 rows (grids of 12 ids): every read crosses batch and row-group boundaries."""
    monkeypatch.setattr(tokens_module, "READ_ELEMENTS", 7 * 12)


@pytest.mark.parametrize("num_codes, dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16)])
def test_narrow_dtype(num_codes, dtype):
    assert narrow_dtype(num_codes) == dtype


@pytest.mark.parametrize("num_codes", [16, 256, 391])
def test_narrow_ids_and_label_filter_match_the_full_read(tmp_path, small_batches, num_codes):
    tokens = token_file(tmp_path / "t.parquet", num_codes=num_codes, row_group=11)
    full = load_tokens(tmp_path / "t.parquet")
    assert full.ids.dtype == np.int64 and np.array_equal(full.ids, tokens.ids) and full.keys == tokens.keys
    kept = load_tokens(tmp_path / "t.parquet", labels=[3, 1], narrow=True)
    mask = np.isin(tokens.labels, [1, 3])
    assert kept.ids.dtype == narrow_dtype(num_codes)
    assert kept.keys == [k for k, m in zip(tokens.keys, mask) if m]  # file order, not the order of `labels`
    assert np.array_equal(kept.labels, tokens.labels[mask]) and kept.labels.dtype == np.int64
    assert np.array_equal(kept.ids.astype(np.int64), tokens.ids[mask])
    assert np.array_equal(wide(kept.ids), tokens.ids[mask]) and wide(kept.ids).dtype == np.int64


def test_key_filter_and_texts(tmp_path, small_batches):
    tokens = token_file(tmp_path / "t.parquet", texts=True)
    wanted = ["k040", "k002", "k017", "missing"]
    kept = load_tokens(tmp_path / "t.parquet", keys=wanted, labels=range(5))
    assert kept.keys == ["k002", "k017", "k040"]
    assert kept.texts == [{"caption": "image 2"}, {"caption": "image 17"}, {"caption": "image 40"}]
    assert np.array_equal(kept.ids, tokens.ids[[2, 17, 40]])
    none = load_tokens(tmp_path / "t.parquet", labels=[99], narrow=True)
    assert none.keys == [] and none.ids.shape == (0, 3, 4) and none.ids.dtype == np.uint16 and none.texts == []


@pytest.mark.parametrize("batch_rows", [1, 5, 7, 13, 50, 64])
def test_iter_tokens_batches_equal_the_full_read(tmp_path, small_batches, batch_rows):
    token_file(tmp_path / "t.parquet", texts=True, row_group=9)
    full = load_tokens(tmp_path / "t.parquet")
    batches = list(iter_tokens(tmp_path / "t.parquet", batch_rows))
    assert [len(b.keys) for b in batches[:-1]] == [batch_rows] * (len(batches) - 1)
    assert 0 < len(batches[-1].keys) <= batch_rows
    assert [k for b in batches for k in b.keys] == full.keys
    assert [t for b in batches for t in b.texts] == full.texts
    assert np.array_equal(np.concatenate([b.labels for b in batches]), full.labels)
    assert np.array_equal(np.concatenate([b.ids for b in batches]), full.ids)
    narrow = np.concatenate([b.ids for b in iter_tokens(tmp_path / "t.parquet", batch_rows, narrow=True)])
    assert narrow.dtype == np.uint16 and np.array_equal(narrow, full.ids)


def test_iter_tokens_errors_at_the_call(tmp_path):
    with pytest.raises(TokenforgeError, match="t.parquet: token file not found"):
        iter_tokens(tmp_path / "t.parquet", 4)
    token_file(tmp_path / "t.parquet")
    with pytest.raises(TokenforgeError, match="batch_rows 0: must be at least 1"):
        iter_tokens(tmp_path / "t.parquet", 0)
    empty = tmp_path / "e.parquet"
    save_tokens(empty, TokenSet([], np.zeros(0, np.int64), np.zeros((0, 2, 2), np.int64)), 8)
    assert list(iter_tokens(empty, 4)) == []


def test_a_bad_text_record_names_its_row_in_the_file(tmp_path, small_batches):
    tokens = token_file(tmp_path / "t.parquet", texts=True)
    table = tokens_table(tokens, 391)
    column = [json.dumps(t) for t in tokens.texts]
    column[20] = "[1, 2]"
    pq.write_table(table.set_column(3, "text", [column]).replace_schema_metadata(table.schema.metadata), tmp_path / "t.parquet")
    with pytest.raises(TokenforgeError, match="column text, row 20: expected a JSON object"):
        load_tokens(tmp_path / "t.parquet")


def test_units_of_some_classes_and_the_first_of_each(tmp_path, small_batches):
    tokens = token_file(tmp_path / "t.parquet", num_codes=64)
    data = split_units("tokens", tmp_path / "t.parquet", None, "train", 1, classes=[0, 4])
    mask = np.isin(tokens.labels, [0, 4])
    assert data.total == 50 and data.units.dtype == np.uint8 and np.array_equal(data.units, tokens.ids[mask])
    assert data.where([4]).keys == [k for k, c in zip(tokens.keys, tokens.labels) if c == 4]
    first = class_examples("tokens", tmp_path / "t.parquet", None, "train", 1, [4, 2, 9])
    expect = [int(np.flatnonzero(tokens.labels == c)[0]) for c in (2, 4)]
    assert first.keys == [tokens.keys[i] for i in sorted(expect)] and np.array_equal(first.units, tokens.ids[sorted(expect)])
    batches = UnitBatches("tokens", tmp_path / "t.parquet", None, "test", 1, 8)
    units = np.concatenate([u for u, _ in batches])
    assert batches.rows == 50 and units.dtype == np.uint8 and np.array_equal(units, tokens.ids)
    with pytest.raises(TokenforgeError, match="--tokens: required with --input tokens"):
        split_units("tokens", None, None, "train", 1)
