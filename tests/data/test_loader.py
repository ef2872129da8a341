"""Streaming a split: iter_split batches, seeded bounded samples, and DataLoader workers keeping key order."""

import numpy as np
import pytest

from tokenforge import cli
from tokenforge.data.loader import tar_sets
from tokenforge.data.shards import iter_split, load_split, sample_split
from tokenforge.errors import TokenforgeError

SHAPES = ["--source", "shapes", "--shapes-count", "60", "--shapes-classes", "4", "--shapes-size", "16"]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "shard"
    assert cli.main(["shard", *SHAPES, "--shard-size", "7", "--out", str(out), "-q"]) == 0
    return out


def test_batches_are_the_split_in_key_order(shard_dir):
    whole = load_split(shard_dir, "train")
    batches = list(iter_split(shard_dir, "train", 5))
    assert [len(b.keys) for b in batches[:-1]] == [5] * (len(batches) - 1)
    assert [k for b in batches for k in b.keys] == whole.keys == sorted(whole.keys)
    assert np.array_equal(np.concatenate([b.images for b in batches]), whole.images)


@pytest.mark.parametrize("workers", [0, 2])
def test_tar_sets_keep_key_order_with_workers(shard_dir, workers):
    whole = load_split(shard_dir, "train")
    sets = list(tar_sets(shard_dir, "train", workers=workers))
    assert len(sets) == 7  # 48 train images in tars of 7
    assert [k for s in sets for k in s.keys] == whole.keys
    assert np.array_equal(np.concatenate([s.images for s in sets]), whole.images)
    assert np.array_equal(np.concatenate([s.labels for s in sets]), whole.labels)


def test_sample_is_seeded_bounded_and_in_key_order(shard_dir):
    whole = load_split(shard_dir, "train")
    a, b = sample_split(shard_dir, "train", 10, seed=3), sample_split(shard_dir, "train", 10, seed=3)
    assert a.keys == b.keys and len(a.keys) == 10 and a.keys == sorted(a.keys)
    assert sample_split(shard_dir, "train", 10, seed=4).keys != a.keys
    index = [whole.keys.index(k) for k in a.keys]
    assert np.array_equal(a.images, whole.images[index])
    assert sample_split(shard_dir, "train", 1000, seed=3).keys == whole.keys  # all when there are fewer
    assert sample_split(shard_dir, "train", None, seed=3).keys == whole.keys


def test_bad_batch_size(shard_dir):
    with pytest.raises(TokenforgeError, match="batch size 0: must be at least 1"):
        next(iter_split(shard_dir, "train", 0))
