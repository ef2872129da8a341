"""Text records through the pipeline: scenes -> shards (json "text") -> load_split -> tokenize (parquet "text")."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenforge import cli
from tokenforge.data.shards import load_split, split_of
from tokenforge.data.sources import open_source
from tokenforge.data.tokens import TokenSet, load_tokens, save_tokens, tokens_table
from tokenforge.errors import TokenforgeError

pytestmark = pytest.mark.usefixtures("one_thread")

SCENES = ["--source", "scenes", "--scenes-count", "40", "--scenes-size", "16"]
SHAPES = ["--source", "shapes", "--shapes-count", "20", "--shapes-classes", "2", "--shapes-size", "16"]
TOKENIZER = ["--codebook-size", "16", "--code-dim", "4", "--hidden-dim", "8", "--downsample", "4", "--epochs", "1",
             "--batch-size", "16"]


@pytest.fixture
def main(monkeypatch):
    """cli.main with only the stages used here registered."""
    monkeypatch.setattr(cli, "STAGES", ("shard", "tokenizer", "tokenize"))
    return lambda stage, *argv: cli.main([stage, *map(str, argv), "-q"])


@pytest.fixture
def scene_shards(main, tmp_path) -> Path:
    out = tmp_path / "shard"
    assert main("shard", *SCENES, "--shard-size", "12", "--out", out) == 0
    return out


def sample_meta(tar_path: Path) -> dict[str, dict]:
    """{key: json meta} of one tar."""
    with tarfile.open(tar_path) as tar:
        return {
            m.name.removesuffix(".json"): json.loads(tar.extractfile(m).read())
            for m in tar.getmembers()
            if m.name.endswith(".json")
        }


def test_scene_shards_carry_text(scene_shards):
    source = open_source("scenes", seed=0, scenes_count=40, scenes_size=16)
    splits = split_of(source, 0.2, 0)
    stats = json.loads((scene_shards / "stats.json").read_text())
    assert stats["text"] is True and stats["counts"] == {"train": 32, "test": 8}
    assert stats["num_classes"] == 1 and stats["channels"] == 3 and stats["split_from"] == "seed"
    for split in ("train", "test"):
        data = load_split(scene_shards, split)
        members = np.flatnonzero(splits == split)
        assert data.keys == [f"{split}_{j:06d}" for j in range(len(members))]
        assert data.texts == [source.texts[i] for i in members]
        assert data.images.shape == (len(members), 16, 16, 3)
        np.testing.assert_array_equal(data.images[0], np.asarray(source.image(int(members[0]))))
        assert stats["qa_pairs"][split] == sum(len(t["qa"]) for t in data.texts)
        assert stats["captions"][split] == 2 * len(members)
    meta = sample_meta(scene_shards / "test-000000.tar")["test_000000"]
    assert set(meta) == {"label", "class_name", "source_id", "text"} and meta["class_name"] == "scenes"
    index = pq.read_table(scene_shards / "index.parquet")
    assert index.schema.names == ["key", "label", "class_name", "split", "shard", "bytes"]


def test_scene_shards_deterministic(main, scene_shards, tmp_path):
    again = tmp_path / "again"
    assert main("shard", *SCENES, "--shard-size", "12", "--out", again) == 0
    for tar in sorted(scene_shards.glob("*.tar")):
        assert tar.read_bytes() == (again / tar.name).read_bytes()


def test_classic_shards_have_no_text(main, tmp_path):
    out = tmp_path / "shard"
    assert main("shard", *SHAPES, "--out", out) == 0
    meta = sample_meta(out / "train-000000.tar")
    assert all(set(m) == {"label", "class_name", "source_id"} for m in meta.values())
    stats = json.loads((out / "stats.json").read_text())
    assert not {"text", "qa_pairs", "captions"} & set(stats)
    assert load_split(out, "train").texts is None


def _rewrite_json(path: Path, key: str, edit) -> None:
    """Rewrite a tar with the json of sample `key` replaced by edit(its bytes)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            if member.name == f"{key}.json":
                data = edit(data)
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_load_split_text_errors(scene_shards):
    bad = scene_shards / "train-000001.tar"

    def drop_text(data: bytes) -> bytes:
        meta = json.loads(data)
        del meta["text"]
        return json.dumps(meta).encode()

    _rewrite_json(bad, "train_000013", drop_text)
    with pytest.raises(TokenforgeError) as err:
        load_split(scene_shards, "train")
    assert str(err.value) == f"{bad}: sample train_000013 has no text record, but other train samples do"

    _rewrite_json(bad, "train_000013", lambda data: b"{not json")
    with pytest.raises(TokenforgeError) as err:
        load_split(scene_shards, "train")
    assert str(err.value).startswith(f"{bad}: corrupt sample train_000013 (JSONDecodeError")

    _rewrite_json(bad, "train_000013", lambda data: b'{"label": 0, "text": [1]}')
    with pytest.raises(TokenforgeError, match="corrupt sample train_000013 .*'text' is not an object"):
        load_split(scene_shards, "train")


def test_tokenize_keeps_text(main, scene_shards, tmp_path):
    tok, tokens = tmp_path / "tokenizer", tmp_path / "tokens"
    assert main("tokenizer", "--shards", scene_shards, "--out", tok, *TOKENIZER) == 0
    assert main("tokenize", "--shards", scene_shards, "--tokenizer", tok, "--out", tokens) == 0
    stats = json.loads((tokens / "stats.json").read_text())
    shard_stats = json.loads((scene_shards / "stats.json").read_text())
    assert stats["text"] is True
    assert stats["qa_pairs"] == shard_stats["qa_pairs"] and stats["captions"] == shard_stats["captions"]
    for split in ("train", "test"):
        data = load_split(scene_shards, split)
        loaded = load_tokens(tokens / f"{split}.parquet")
        assert loaded.keys == data.keys and loaded.texts == data.texts
        assert loaded.ids.shape == (len(data.keys), 4, 4)
        table = pq.read_table(tokens / f"{split}.parquet")
        assert table.schema.names == ["key", "label", "ids", "text"]
        assert table.schema.field("text").type == pa.string()
        assert table.column("text")[0].as_py() == json.dumps(data.texts[0], sort_keys=True)

    # a classic source through the same tokenizer (16x16 RGB too): no text column, no text stats
    shapes, shape_tokens = tmp_path / "shapes", tmp_path / "shape_tokens"
    assert main("shard", *SHAPES, "--out", shapes) == 0
    assert main("tokenize", "--shards", shapes, "--tokenizer", tok, "--out", shape_tokens) == 0
    assert pq.read_table(shape_tokens / "train.parquet").schema.names == ["key", "label", "ids"]
    assert load_tokens(shape_tokens / "train.parquet").texts is None
    assert "text" not in json.loads((shape_tokens / "stats.json").read_text())


def _token_set(texts=None) -> TokenSet:
    rng = np.random.default_rng(0)
    return TokenSet([f"k{i}" for i in range(3)], np.arange(3), rng.integers(0, 16, (3, 2, 2)), texts)


def test_token_file_text_round_trip(tmp_path):
    texts = [{"dataset": "coco", "qa": [], "captions": [f"caption {i} é"], "objects": ["cat"]} for i in range(3)]
    save_tokens(tmp_path / "t.parquet", _token_set(texts), 16)
    assert load_tokens(tmp_path / "t.parquet").texts == texts
    # without texts, the table (and so the file) is exactly what it was before the text column existed
    save_tokens(tmp_path / "a.parquet", _token_set(), 16)
    assert pq.read_table(tmp_path / "a.parquet").schema.names == ["key", "label", "ids"]
    assert load_tokens(tmp_path / "a.parquet").texts is None
    with pytest.raises(TokenforgeError, match="2 text records for 3 grids"):
        tokens_table(_token_set(texts[:2]), 16)


def test_token_file_bad_text(tmp_path):
    table = tokens_table(_token_set(), 16)
    path = tmp_path / "bad.parquet"
    pq.write_table(table.append_column("text", pa.array(["{}", "nope", "{}"])), path)
    with pytest.raises(TokenforgeError, match=f"{path}: column text, row 1: not valid JSON"):
        load_tokens(path)
    pq.write_table(table.append_column("text", pa.array(["{}", "[1]", None])), path)
    with pytest.raises(TokenforgeError, match=f"{path}: column text, row 1: expected a JSON object"):
        load_tokens(path)
    pq.write_table(table.append_column("text", pa.array([1, 2, 3])), path)
    with pytest.raises(TokenforgeError, match="column text must hold strings"):
        load_tokens(path)
