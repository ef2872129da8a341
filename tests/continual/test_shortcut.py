"""The shortcut probe: AUC near 1 where replayed views are recognisable, 0.5 where they match the whole samples."""

import numpy as np
import torch

from tokenforge.continual.memory import Memory
from tokenforge.continual.replay import Replay, ReplayConfig
from tokenforge.continual.shortcut import probe_auc, shortcut_auc
from tokenforge.models.vit import ModelConfig, TokenViT


def test_a_planted_shortcut_is_found():
    rng = np.random.default_rng(0)
    wholes = rng.normal(size=(60, 8))
    views = wholes + rng.normal(scale=0.3, size=wholes.shape)
    views[:, 3] += 6.0  # one feature tells a view from the whole sample
    assert probe_auc(views, wholes) > 0.95


def test_matched_views_give_half():
    wholes = np.random.default_rng(0).normal(size=(40, 8))
    assert probe_auc(wholes.copy(), wholes) == 0.5  # both views of a sample score the same


def test_unrelated_noise_gives_about_half():
    rng = np.random.default_rng(1)
    assert 0.3 < probe_auc(rng.normal(size=(80, 8)), rng.normal(size=(80, 8))) < 0.7


def test_too_few_rows_give_none():
    assert probe_auc(np.zeros((3, 4)), np.zeros((3, 4))) is None


def _model_and_units():
    torch.manual_seed(0)
    config = ModelConfig(grid=(4, 4), codebook_size=8, code_dim=4, num_classes=2, embed_dim=16, depth=1, num_heads=2)
    model = TokenViT(config, torch.randn(8, 4)).eval()
    units = np.random.default_rng(0).integers(0, 8, (30, 4, 4))
    return model, units


def _memory(units: np.ndarray, k: int) -> Memory:
    n = len(units)
    positions = np.tile(np.arange(k), (n, 1))
    ids = units.reshape(n, -1)[:, :k]
    return Memory([f"k{i}" for i in range(n)], np.arange(n) % 2, np.zeros(n, np.int64), positions, ids)


def test_whole_samples_replayed_whole_are_indistinguishable():
    model, units = _model_and_units()
    memory = _memory(units, 16)  # a coreset: every token
    replay = Replay(memory, ReplayConfig(batch=4, keep=16, grid=(4, 4)), torch.Generator())
    keys = [f"k{i}" for i in range(len(units))]
    assert abs(shortcut_auc(model, memory, replay, keys, units) - 0.5) < 0.1


def test_one_token_views_are_told_from_whole_grids():
    model, units = _model_and_units()
    memory = _memory(units, 1)
    replay = Replay(memory, ReplayConfig(batch=4, keep=1, grid=(4, 4)), torch.Generator())
    keys = [f"k{i}" for i in range(len(units))]
    assert shortcut_auc(model, memory, replay, keys, units) > 0.9
    # a memory whose samples are not in the given data is not probed
    assert shortcut_auc(model, memory, replay, [f"other{i}" for i in range(30)], units) is None
