"""SeiT's token format: the byte code, a hand-built release, round trips both ways, bad files, `tokenforge seit`."""

import gzip
import io
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tokenforge import cli
from tokenforge.data.seit import (
    MAX_ID,
    decode_stream,
    encode_ids,
    read_seit,
    write_seit,
)
from tokenforge.data.tokens import TokenSet, load_tokens, save_tokens
from tokenforge.errors import TokenforgeError
from tokenforge.tokenizer.synonyms import synonyms_json
from tokenforge.tokenizer.vq import (
    build_model,
    load_tokenizer,
    make_config,
    save_tokenizer,
)

# ------------------------------------------------------------------------------- a release built by hand


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# Three 2x2 images, encoded by hand from the spec: below 255 one byte, else 255 then id - 255.
HAND_IDS = np.array([[[0, 254], [255, 300]], [[509, 1], [2, 3]], [[256, 256], [0, 0]]])
HAND_BYTES = [
    bytes([0, 254, 255, 0, 255, 45]),
    bytes([255, 254, 1, 2, 3]),
    bytes([255, 1, 255, 1, 0, 0]),
]


def hand_release(root, images=HAND_BYTES, index=None, labels="3\n1\n4\n", codebook=None, prefix="hand-train"):
    """Write a SeiT split the way their release is laid out, without our writer; returns the directory."""
    root.mkdir(parents=True, exist_ok=True)
    stream = b"".join(images)
    if index is None:
        index = np.cumsum([0] + [len(b) for b in images])
    (root / f"{prefix}-token.data.bin.gz").write_bytes(gz(stream))
    (root / f"{prefix}-token.index.npy.gz").write_bytes(gz(npy(np.asarray(index))))
    (root / f"{prefix}-label.txt").write_text(labels)
    # SeiT's loader does torch.load(path).cpu(): a bare tensor
    torch.save(torch.arange(510 * 2, dtype=torch.float32).reshape(510, 2) if codebook is None else codebook,
               root / "codebook.ckpt")
    return root


def test_byte_code_matches_the_spec():
    assert encode_ids(HAND_IDS[0]) == HAND_BYTES[0]
    assert encode_ids(HAND_IDS) == b"".join(HAND_BYTES)
    assert encode_ids(np.zeros(0, dtype=np.int64)) == b""


@pytest.mark.parametrize("bad", [-1, MAX_ID + 1, 510, 511, 70000])
def test_encode_refuses_ids_outside_the_format(bad):
    # 510 would be 255 255, which SeiT's decoder reads as two escapes: the format stops at 509.
    with pytest.raises(TokenforgeError, match=f"id {bad} does not fit SeiT's byte format"):
        encode_ids(np.array([3, bad]))


def test_decode_hand_stream():
    stream = b"".join(HAND_BYTES)
    offsets = np.cumsum([0] + [len(b) for b in HAND_BYTES])
    ids = decode_stream(stream, offsets, (2, 2), "s")
    assert ids.dtype == np.int64 and np.array_equal(ids, HAND_IDS)
    assert np.array_equal(decode_stream(stream, offsets, (1, 4), "s"), HAND_IDS.reshape(3, 1, 4))


@pytest.mark.parametrize(
    "stream, offsets, grid, message",
    [
        (b"\x01\x02\xff", [0, 3], (1, 3), "image 0 ends in an escape byte 255"),
        (b"\x01\xff\x02\x03", [0, 2, 4], (1, 2), "image 0 ends in an escape byte 255"),
        (b"\x01\x02\x03", [0, 2, 5], (1, 2), "truncated stream: image 1 runs past its end"),
        (b"\x01\x02\x03\x04", [0, 2, 2, 4], (1, 2), "index not increasing at entry 2"),
        (b"\x01\x02\x03\x04", [0, 3, 2, 4], (1, 2), "index not increasing at entry 2"),
        (b"\x01\x02\x03\x04", [1, 4], (1, 3), "index must start at 0"),
        (b"\x01\x02\x03\x04", [0, 2], (1, 2), "index ends at byte 2 of a 4-byte stream"),
        (b"\x01\x02\x03\x04", [0, 2, 4], (2, 2), "image 0 has 2 tokens but the grid 2x2 needs 4"),
        (b"\xff\xff\x01", [0, 3], (1, 1), "bytes 255 255, which no SeiT id encodes"),
    ],
)
def test_decode_bad_streams(stream, offsets, grid, message):
    with pytest.raises(TokenforgeError, match=message):
        decode_stream(stream, np.array(offsets), grid, "s.bin.gz")


def test_read_hand_release(tmp_path):
    root = hand_release(tmp_path / "rel")
    (root / "codebook-synonyms.json").write_text(json.dumps({"0": [5, 1], "509": [3]}))
    got = read_seit(root, "hand-train")
    assert np.array_equal(got.ids, HAND_IDS)  # no grid file: a square, as SeiT assumes
    assert got.labels.tolist() == [3, 1, 4] and got.labels.dtype == np.int64
    assert got.codebook.dtype == np.float32 and got.codebook.shape == (510, 2) and got.codebook[3, 1] == 7
    assert got.synonyms == {0: [5, 1], 509: [3]}
    assert read_seit(root, "hand-train", grid=(4, 1)).ids.shape == (3, 4, 1)


def test_read_takes_synonyms_json_and_codebook_dicts(tmp_path):
    root = hand_release(tmp_path / "rel", codebook={"weight": torch.ones(510, 3), "step": torch.tensor(7)})
    (root / "synonyms.json").write_text('{"2": [1]}')  # the name in SeiT's first README
    got = read_seit(root, "hand-train")
    assert got.codebook.shape == (510, 3) and got.synonyms == {2: [1]}


def test_write_then_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 400, (9, 3, 5))
    ids[0, 0, :4] = [0, 254, 255, 399]
    labels = rng.integers(0, 7, 9)
    codebook = rng.normal(size=(400, 4)).astype(np.float32)
    synonyms = {i: [(i + 1) % 400, (i + 2) % 400] for i in range(400)}
    write_seit(tmp_path, "x-train", ids, labels, codebook, synonyms)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["codebook-synonyms.json", "codebook.ckpt", "codebook.safetensors", "x-train-label.txt",
                     "x-train-token.data.bin.gz", "x-train-token.grid.json", "x-train-token.index.npy.gz"]
    got = read_seit(tmp_path, "x-train")
    assert np.array_equal(got.ids, ids) and np.array_equal(got.labels, labels)
    assert np.array_equal(got.codebook, codebook) and got.synonyms == synonyms
    # what SeiT's loader sees: a bare tensor checkpoint, one label per line, an index of N+1 offsets
    assert torch.equal(torch.load(tmp_path / "codebook.ckpt", weights_only=True), torch.from_numpy(codebook))
    assert (tmp_path / "x-train-label.txt").read_text() == "".join(f"{v}\n" for v in labels)
    with gzip.open(tmp_path / "x-train-token.index.npy.gz") as f:
        assert len(np.load(f)) == 10
    # the same input gives the same bytes (no time stamp in the gzip header)
    write_seit(tmp_path / "again", "x-train", ids, labels, codebook, synonyms)
    for name in names:
        assert (tmp_path / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_hand_release_through_writer_is_byte_identical(tmp_path):
    # independent encodings agree: the hand-built stream == our writer's stream for the same ids
    hand_release(tmp_path / "hand")
    write_seit(tmp_path / "ours", "hand-train", HAND_IDS, np.array([3, 1, 4]), None, None)
    for suffix in ("-token.data.bin.gz", "-token.index.npy.gz"):
        hand = gzip.decompress((tmp_path / "hand" / f"hand-train{suffix}").read_bytes())
        assert gzip.decompress((tmp_path / "ours" / f"hand-train{suffix}").read_bytes()) == hand


def test_write_checks_before_writing(tmp_path):
    with pytest.raises(TokenforgeError, match=r"ids: values must lie in \[0, 4\)"):
        write_seit(tmp_path, "p", np.full((1, 2, 2), 4), np.array([0]), np.zeros((4, 2)), None)
    with pytest.raises(TokenforgeError, match="labels: 2 labels for 1 images"):
        write_seit(tmp_path, "p", np.zeros((1, 2, 2), dtype=int), np.array([0, 1]), None, None)
    with pytest.raises(TokenforgeError, match="codebook: 600 codes; SeiT's byte format holds at most 510"):
        write_seit(tmp_path, "p", np.zeros((1, 2, 2), dtype=int), np.array([0]), np.zeros((600, 2)), None)
    assert list(tmp_path.iterdir()) == []


UNPICKLED = []


def _run_on_load():
    UNPICKLED.append(True)
    return torch.ones(510, 2)


class Evil:
    """Unpickling it calls _run_on_load: what a hostile checkpoint would do with os.system."""

    def __reduce__(self):
        return _run_on_load, ()


def test_checkpoint_is_never_unpickled(tmp_path):
    root = hand_release(tmp_path / "rel")
    torch.save({"codebook": Evil()}, root / "codebook.ckpt")
    with pytest.raises(TokenforgeError, match="codebook.ckpt: not a weights-only torch checkpoint"):
        read_seit(root, "hand-train")
    assert UNPICKLED == []
    torch.load(root / "codebook.ckpt", weights_only=False)  # the unsafe load would have run it
    assert UNPICKLED == [True]


# ------------------------------------------------------------------------------- CLI


@pytest.fixture
def tokenforge(monkeypatch):
    monkeypatch.setattr(cli, "STAGES", ("seit",))
    return cli.main


@pytest.fixture
def token_dir(tmp_path):
    """Our layout: a tokenizer with 16 codes on an 8x8 image (4x4 grid) and train/test token files."""
    root = tmp_path / "tokens"
    (root / "tokenizer").mkdir(parents=True)
    torch.manual_seed(0)
    save_tokenizer(build_model(make_config((8, 8), 1, 2, 16, 4, 8, 0)), root / "tokenizer")
    rng = np.random.default_rng(1)
    for split, n in (("train", 12), ("test", 5)):
        ids = rng.integers(0, 16, (n, 4, 4))
        keys = [f"{split}{i}" for i in range(n)]
        save_tokens(root / f"{split}.parquet", TokenSet(keys, rng.integers(0, 3, n), ids), 16)
    (root / "synonyms.json").write_text(json.dumps({str(i): [(i + 1) % 16] for i in range(16)}))
    return root


def test_export_then_import_round_trip(tokenforge, token_dir, tmp_path):
    seit_dir, back = tmp_path / "seit", tmp_path / "back"
    args = ["seit", "export", "--tokens", str(token_dir), "--tokenizer", str(token_dir / "tokenizer"),
            "--synonyms", str(token_dir / "synonyms.json"), "--out", str(seit_dir), "--name", "toy", "-q"]
    assert tokenforge(args) == 0
    assert (seit_dir / "toy-val-label.txt").is_file() and (seit_dir / "codebook-synonyms.json").is_file()
    assert tokenforge(["seit", "import", "--src", str(seit_dir), "--out", str(back), "-q"]) == 0
    for split in ("train", "test"):
        ours, theirs = load_tokens(token_dir / f"{split}.parquet"), load_tokens(back / f"{split}.parquet")
        assert np.array_equal(ours.ids, theirs.ids) and np.array_equal(ours.labels, theirs.labels)
        assert theirs.keys[:2] == [f"{split}_000000", f"{split}_000001"]
    codebook = load_file(str(back / "codebook.safetensors"))["codebook"]
    assert np.array_equal(codebook, load_tokenizer(token_dir / "tokenizer").codebook.numpy())
    meta = json.loads((back / "tokenizer.json").read_text())
    assert meta == {"grid": [4, 4], "codebook_size": 16, "code_dim": 4, "source": "seit"}
    # the layout `tokenforge synonyms` writes, with the exported synonyms
    assert (back / "synonyms.json").read_text() == synonyms_json(np.array([[(i + 1) % 16] for i in range(16)]))
    stats = json.loads((back / "stats.json").read_text())
    assert stats["counts"] == {"train": 12, "test": 5} and stats["grid"] == [4, 4] and stats["num_codes"] == 16
    assert stats["bytes_per_image"]["seit"] > 0 and stats["bytes_per_image"]["tokens"] > 0


def test_import_then_export_round_trip(tokenforge, tmp_path):
    """A hand-built release (ids up to 509) -> our layout -> SeiT again: the same ids, labels and codebook."""
    src = hand_release(tmp_path / "rel")
    hand_release(src, images=HAND_BYTES[::-1], labels="0\n0\n2\n", prefix="hand-val")
    ours = tmp_path / "ours"
    assert tokenforge(["seit", "import", "--src", str(src), "--out", str(ours), "-q"]) == 0
    assert np.array_equal(load_tokens(ours / "train.parquet").ids, HAND_IDS)
    assert np.array_equal(load_tokens(ours / "test.parquet").ids, HAND_IDS[::-1])
    train = load_tokens(ours / "train.parquet")
    codebook = load_file(str(ours / "codebook.safetensors"))["codebook"]
    again = tmp_path / "again"
    write_seit(again, "hand-train", train.ids, train.labels, codebook, None)
    assert torch.equal(torch.load(again / "codebook.ckpt", weights_only=True), torch.load(src / "codebook.ckpt"))
    assert (again / "hand-train-label.txt").read_bytes() == (src / "hand-train-label.txt").read_bytes()
    for suffix in ("-token.data.bin.gz", "-token.index.npy.gz"):  # same decompressed bytes as the hand-built files
        assert gzip.decompress((again / f"hand-train{suffix}").read_bytes()) == \
            gzip.decompress((src / f"hand-train{suffix}").read_bytes())


def run_import(tokenforge, src, out, capsys, *extra):
    code = tokenforge(["seit", "import", "--src", str(src), "--out", str(out), "-q", *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines


def two_splits(root, **kwargs):
    """A good val split, then a train split (and codebook) made with `kwargs`."""
    hand_release(root, prefix="hand-val")
    return hand_release(root, **kwargs)


@pytest.mark.parametrize(
    "kwargs, extra, message",
    [
        ({"codebook": torch.zeros(300, 2)}, [], "hand-train-token.data.bin.gz: id 509 out of range for the "
                                                "300-code codebook in codebook.ckpt"),
        ({"images": [HAND_BYTES[0], HAND_BYTES[1][:-1] + b"\xff", HAND_BYTES[2]]}, [],
         "image 1 ends in an escape byte 255 (truncated stream)"),
        ({"index": [0, 6, 11, 20]}, [], "hand-train-token.data.bin.gz: truncated stream: image 2 runs past its end"),
        ({"index": [0, 20], "labels": "1\n"}, [], "hand-train-token.data.bin.gz: truncated stream: image 0 runs"),
        ({"index": [0, 6, 11]}, [], "hand-train-token.data.bin.gz: index ends at byte 11 of a 17-byte stream"),
        ({"index": [0, 11, 6, 17]}, [], "hand-train-token.index.npy.gz: index not increasing at entry 2"),
        ({"labels": "3\n1\n"}, [], "hand-train-label.txt: 2 labels for the 3 images of hand-train-token.index.npy.gz"),
        ({"labels": "3\nx\n4\n"}, [], "hand-train-label.txt: line 2 is not an integer label"),
        ({}, ["--grid", "3", "3"], "image 0 has 4 tokens but the grid 3x3 needs 9"),
        ({"images": [HAND_BYTES[0], bytes([1, 2, 3])]}, [], "image 1 has 3 tokens but the grid 2x2 needs 4"),
        ({"images": [bytes([1, 2, 3])]}, [], "image 0 has 3 tokens, not a square grid; pass --grid H W"),
        ({"codebook": {"a": torch.zeros(2, 2), "b": torch.zeros(3, 2)}}, [], "cannot tell which is the codebook"),
    ],
)
def test_import_bad_release(tokenforge, tmp_path, capsys, kwargs, extra, message):
    if "labels" not in kwargs and "images" in kwargs:
        kwargs["labels"] = "".join("0\n" for _ in kwargs["images"])
    src = two_splits(tmp_path / "rel", **kwargs)
    out = tmp_path / "out"
    code, lines = run_import(tokenforge, src, out, capsys, *extra)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("tokenforge seit: error: ") and message in lines[0], lines[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["rel"]  # no temporary left either


def test_import_truncated_gzip(tokenforge, tmp_path, capsys):
    src = two_splits(tmp_path / "rel")
    data = src / "hand-val-token.data.bin.gz"
    data.write_bytes(data.read_bytes()[:-6])
    code, lines = run_import(tokenforge, src, tmp_path / "out", capsys)
    assert code == 2 and len(lines) == 1 and "hand-val-token.data.bin.gz: not a complete gzip file" in lines[0]
    assert not (tmp_path / "out").exists()


def test_import_needs_the_codebook_and_one_release(tokenforge, tmp_path, capsys):
    src = two_splits(tmp_path / "rel")
    (src / "codebook.ckpt").unlink()
    code, lines = run_import(tokenforge, src, tmp_path / "out", capsys)
    assert code == 2 and lines == [f"tokenforge seit: error: {src / 'codebook.ckpt'}: not found; importing needs "
                                   "the release's codebook"]
    code, lines = run_import(tokenforge, tmp_path, tmp_path / "out", capsys)
    assert code == 2 and "found 0 releases" in lines[0]


def test_export_refuses_big_codebooks(tokenforge, token_dir, tmp_path, capsys):
    big = tmp_path / "big"
    big.mkdir()
    save_tokenizer(build_model(make_config((8, 8), 1, 2, 600, 2, 4, 0)), big)
    out = tmp_path / "seit"
    code = tokenforge(["seit", "export", "--tokens", str(token_dir), "--tokenizer", str(big), "--out", str(out), "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [f"tokenforge seit: error: {big / 'config.json'}: 600 codes; SeiT's byte format "
                                   "holds at most 510 (ids 0..509)"]
    assert not out.exists()


def test_export_refuses_a_grid_that_does_not_match_the_tokenizer(tokenforge, token_dir, tmp_path, capsys):
    ids = np.zeros((2, 2, 2), dtype=np.int64)
    save_tokens(token_dir / "test.parquet", TokenSet(["a", "b"], np.array([0, 1]), ids), 16)
    out = tmp_path / "seit"
    code = tokenforge(["seit", "export", "--tokens", str(token_dir), "--tokenizer", str(token_dir / "tokenizer"),
                       "--out", str(out), "-q"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "test.parquet: token grid [2, 2] does not match the tokenizer's grid [4, 4]" in lines[0]
    assert not out.exists()


def test_missing_action_options(tokenforge, tmp_path, capsys):
    assert tokenforge(["seit", "import", "--out", str(tmp_path / "o"), "-q"]) == 2
    assert capsys.readouterr().err.strip() == "tokenforge seit: error: --src: required for `tokenforge seit import`"
