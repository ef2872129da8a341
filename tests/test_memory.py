import numpy as np
import pytest
import torch

from tokenforge.errors import TokenforgeError
from tokenforge.memory import (
    Memory,
    attention_rollout,
    build_task_memory,
    keep_count,
    read_memory,
    select_random,
    write_memory,
)
from tokenforge.model import ModelConfig, TokenViT


def tiny():
    torch.manual_seed(0)
    cfg = ModelConfig(grid=(4, 4), codebook_size=32, code_dim=8, num_classes=4, embed_dim=32, depth=2)
    return TokenViT(cfg, torch.randn(32, 8)).eval()


def test_select_random_per_class_and_deterministic():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    a = select_random(labels, 5, seed=1)
    assert np.array_equal(a, select_random(labels, 5, seed=1))
    assert np.bincount(labels[a]).tolist() == [5, 3, 5]
    assert len(np.unique(a)) == len(a)
    assert select_random(labels, 0, seed=1).size == 0


def test_rollout_is_a_distribution_over_tokens_when_prefix_included():
    model = tiny()
    scores = attention_rollout(model, torch.randint(0, 32, (3, 4, 4)))
    assert scores.shape == (3, 16)
    assert (scores >= 0).all()
    assert (scores.sum(1) < 1).all()  # the CLS token keeps part of the mass


def test_rollout_finds_the_token_that_all_attention_goes_to():
    # A one-block model whose queries and keys make every token attend to one planted code:
    # attention rollout must rank the position holding that code first.
    torch.manual_seed(0)
    cfg = ModelConfig(grid=(4, 4), codebook_size=8, code_dim=8, num_classes=2, embed_dim=8, depth=1, num_heads=1)
    model = TokenViT(cfg, torch.eye(8) * 4).eval()
    with torch.no_grad():
        model.vit.pos_embed.zero_()
        model.vit.cls_token.zero_()
        proj = model.vit.patch_embed.proj
        proj.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
        proj.bias.zero_()
        block = model.vit.blocks[0]
        block.norm1 = torch.nn.Identity()
        qkv = block.attn.qkv
        qkv.weight.zero_()
        qkv.bias.zero_()
        qkv.bias[:8] = 1.0  # every query is the all-ones vector
        qkv.weight[8 + 3, 3] = 50.0  # a key that is large only for code 3
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, 2, 1] = 3  # position 9
    scores = attention_rollout(model, ids)
    assert int(scores.argmax()) == 9


def test_build_memory_keeps_top_fraction(tmp_path):
    model = tiny()
    ids = np.random.default_rng(0).integers(0, 32, (6, 4, 4))
    mem = build_task_memory(model, [f"k{i}" for i in range(6)], np.arange(6) % 2, ids, task=1, token_fraction=0.25)
    assert mem.ids.shape == mem.positions.shape == (6, 4)
    assert (np.diff(mem.positions, axis=1) > 0).all()  # sorted, unique positions
    flat = ids.reshape(6, -1)
    assert np.array_equal(np.take_along_axis(flat, mem.positions, 1), mem.ids)
    assert (mem.tasks == 1).all()


def test_write_read_round_trip_and_bytes_on_disk(tmp_path):
    mem = Memory(["a", "b"], np.array([1, 2]), np.array([0, 0]), np.array([[0, 5], [3, 15]]), np.array([[7, 8], [9, 31]]))
    path = tmp_path / "memory.parquet"
    nbytes = write_memory(mem, path, num_codes=32, num_positions=16)
    assert nbytes == path.stat().st_size
    back = read_memory(path)
    assert back.keys == mem.keys
    for field in ("labels", "tasks", "positions", "ids"):
        assert np.array_equal(getattr(back, field), getattr(mem, field))


def test_empty_memory_round_trip(tmp_path):
    path = tmp_path / "memory.parquet"
    write_memory(Memory.empty(), path, 32, 16)
    assert len(read_memory(path)) == 0


def test_memory_concat():
    a = Memory(["a"], np.array([1]), np.array([0]), np.array([[0, 1]]), np.array([[2, 3]]))
    b = Memory(["b"], np.array([2]), np.array([1]), np.array([[4, 5]]), np.array([[6, 7]]))
    both = Memory.empty().concat(a).concat(b)
    assert both.keys == ["a", "b"] and both.ids.tolist() == [[2, 3], [6, 7]]


def test_token_fraction_range():
    assert keep_count(16, 0.5) == 8 and keep_count(16, 0.01) == 1 and keep_count(16, 1.0) == 16
    with pytest.raises(TokenforgeError, match="token_fraction"):
        keep_count(16, 0.0)


def test_random_scorer_is_seeded_and_unknown_scorer_fails():
    model = tiny()
    ids = np.random.default_rng(0).integers(0, 32, (4, 4, 4))
    args = (model, list("abcd"), np.zeros(4, np.int64), ids, 0, 0.5)
    a = build_task_memory(*args, scorer="random", seed=3)
    b = build_task_memory(*args, scorer="random", seed=3)
    assert np.array_equal(a.positions, b.positions)
    assert not np.array_equal(a.positions, build_task_memory(*args, scorer="random", seed=4).positions)
    with pytest.raises(TokenforgeError, match="unknown scorer"):
        build_task_memory(*args, scorer="gradcam")
