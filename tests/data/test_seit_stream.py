"""`tokenforge seit import` streams: a release is read, decoded and written a chunk of images at a time, with the same
token files (keys, labels, ids, metadata) and the same one-line errors as reading each split whole."""

import gzip
import io

import numpy as np
import pyarrow.parquet as pq
import pytest

import tokenforge.data.seit as seit
from tokenforge.data.seit import import_release, open_split, read_seit, write_codebook, write_seit
from tokenforge.data.tokens import TokenSet, load_tokens, save_tokens
from tokenforge.errors import TokenforgeError

CODES = 391  # SeiT's pruned ImageNet codebook: ids of 255 and up take two bytes
TRAIN, VAL = 20_000, 2_000


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A synthetic release: 20k train and 2k val images of 4x4 ids (with escapes); (dir, {split: (ids, labels)})."""
    root = tmp_path_factory.mktemp("release")
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(CODES, 4)).astype(np.float32)
    made = {}
    for ours, theirs, n in (("train", "train", TRAIN), ("test", "val", VAL)):
        ids, labels = rng.integers(0, CODES, (n, 4, 4)), rng.integers(0, 1000, n)
        write_seit(root, f"syn-{theirs}", ids, labels, codebook, None)
        made[ours] = ids, labels
    return root, made


def test_a_20k_release_imported_in_small_chunks_has_every_key_label_and_id(release, tmp_path, monkeypatch):
    src, made = release
    chunks = []
    real = seit.SeitSplit.chunks

    def recorded(self, images):
        for first, ids in real(self, images):
            chunks.append(len(ids))
            yield first, ids

    monkeypatch.setattr(seit.SeitSplit, "chunks", recorded)
    stats = import_release(src, tmp_path / "out", None, None, chunk=777)
    assert max(chunks) == 777 and sum(chunks) == TRAIN + VAL  # memory held 777 images of ids at a time
    assert stats["counts"] == {"train": TRAIN, "test": VAL} and stats["grid"] == [4, 4] and stats["num_codes"] == CODES
    for split, (ids, labels) in made.items():
        got = load_tokens(tmp_path / "out" / f"{split}.parquet")
        assert got.keys == [f"{split}_{i:06d}" for i in range(len(ids))]
        assert np.array_equal(got.labels, labels) and np.array_equal(got.ids, ids)
        # up to a row group of images (GROUP_ELEMENTS ids), the very file the whole-split path (save_tokens) writes
        save_tokens(tmp_path / f"{split}.parquet", TokenSet(got.keys, labels, ids), CODES)
        assert (tmp_path / "out" / f"{split}.parquet").read_bytes() == (tmp_path / f"{split}.parquet").read_bytes()


def test_row_groups_of_a_streamed_split_hold_the_same_content(release, tmp_path, monkeypatch):
    src, made = release
    monkeypatch.setattr(seit, "GROUP_ELEMENTS", 16 * 5000)  # row groups of >= 5000 images: whole chunks of 1000
    import_release(src, tmp_path / "out", None, None, chunk=1000)
    path = tmp_path / "out" / "train.parquet"
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5000] * 4
    got = load_tokens(path)
    assert np.array_equal(got.ids, made["train"][0]) and np.array_equal(got.labels, made["train"][1])
    assert pq.read_schema(path).metadata[b"grid"] == b"4,4" and pq.read_schema(path).metadata[b"num_codes"] == b"391"


def rewrite(root, prefix, edit):
    """Replace split `prefix`'s decompressed stream and index by `edit(stream, offsets)`."""
    data, index = root / f"{prefix}-token.data.bin.gz", root / f"{prefix}-token.index.npy.gz"
    stream = gzip.decompress(data.read_bytes())
    with gzip.open(index) as f:
        offsets = np.load(f)
    stream, offsets = edit(stream, offsets)
    data.write_bytes(gzip.compress(stream, mtime=0))
    buffer = io.BytesIO()
    np.save(buffer, offsets)
    index.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))


def small_release(root, ids, codebook_codes=CODES):
    """Train and val splits of `ids`, and a codebook of `codebook_codes` codes written apart (ids may exceed it)."""
    for theirs in ("train", "val"):
        write_seit(root, f"syn-{theirs}", ids, np.zeros(len(ids), np.int64), None, None)
    write_codebook(root, np.zeros((codebook_codes, 2), np.float32))
    return root


def errors(src, chunk):
    """The error of a streamed import and of a whole read of the train split."""
    with pytest.raises(TokenforgeError) as streamed:
        import_release(src, src.parent / "out", None, None, chunk=chunk)
    with pytest.raises(TokenforgeError) as whole:
        read_seit(src, "syn-train")
    assert not (src.parent / "out").exists()
    return str(streamed.value), str(whole.value)


def test_a_bad_image_in_a_later_chunk_is_named_by_its_number_in_the_split(tmp_path):
    ids = np.random.default_rng(1).integers(0, 200, (5000, 4, 4))  # ids below 255: one byte each

    def drop_a_byte(stream, offsets):
        cut = int(offsets[3210 + 1]) - 1
        return stream[:cut] + stream[cut + 1 :], np.concatenate([offsets[:3211], offsets[3211:] - 1])

    rewrite(small_release(tmp_path / "rel", ids), "syn-train", drop_a_byte)
    streamed, whole = errors(tmp_path / "rel", chunk=1000)
    assert streamed == whole and "image 3210 has 15 tokens but the grid 4x4 needs 16" in streamed


def test_a_truncated_stream_names_the_same_image_and_length(tmp_path):
    ids = np.random.default_rng(2).integers(0, CODES, (5000, 4, 4))
    rewrite(small_release(tmp_path / "rel", ids), "syn-train", lambda s, o: (s[: int(o[4321]) + 5], o))
    streamed, whole = errors(tmp_path / "rel", chunk=1000)
    assert streamed == whole and "truncated stream: image 4321 runs past its end" in streamed
    # the index one image short: bytes are left over (named before the labels, one too many now, as a whole read does)
    rewrite(small_release(tmp_path / "again", ids), "syn-train", lambda s, o: (s, o[:-1]))
    streamed, whole = errors(tmp_path / "again", chunk=1000)
    assert streamed == whole and "index ends at byte" in streamed and "-byte stream" in streamed


def test_ids_past_the_codebook_name_the_splits_largest_id(tmp_path):
    ids = np.random.default_rng(3).integers(0, 300, (5000, 4, 4))
    ids[1500, 0, 0], ids[4500, 1, 1] = 400, 450  # in the 2nd and the 5th chunk
    streamed, whole = errors(small_release(tmp_path / "rel", ids, codebook_codes=300), chunk=1000)
    assert streamed == whole and "id 450 out of range for the 300-code codebook in codebook.safetensors" in streamed


def test_chunks_cover_the_split_in_order(release):
    src, made = release
    split = open_split(src, "syn-val")
    firsts, parts = zip(*split.chunks(600))
    assert firsts == (0, 600, 1200, 1800) and [len(p) for p in parts] == [600, 600, 600, 200]
    assert np.array_equal(np.concatenate(parts), made["test"][0]) and np.array_equal(split.labels, made["test"][1])
