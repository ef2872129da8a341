"""The replay variants: views (subset, filled grids), schedules (every step, once per epoch), input dropout modes."""

import numpy as np
import pytest
import torch

from tokenforge.continual.memory import Memory
from tokenforge.continual.replay import Replay, ReplayConfig, fill_grid, fill_value

GRID = (4, 4)


def _memory(rows: int = 10, k: int = 3, pixels: int = 0) -> Memory:
    rng = np.random.default_rng(0)
    positions = np.sort(np.stack([rng.choice(16, k, replace=False) for _ in range(rows)]), axis=1)
    ids = rng.integers(0, 8, (rows, k, pixels) if pixels else (rows, k)).astype(np.uint8 if pixels else np.int64)
    labels = np.arange(rows) % 2
    return Memory([f"m{i}" for i in range(rows)], labels, np.zeros(rows, np.int64), positions, ids)


def _replay(memory: Memory, seed: int = 0, **config) -> Replay:
    defaults = {"batch": 4, "keep": 3, "grid": GRID}
    return Replay(memory, ReplayConfig(**{**defaults, **config}), torch.Generator().manual_seed(seed))


def test_fill_grid_puts_the_kept_ids_at_their_positions_and_the_fill_elsewhere():
    ids, positions = torch.tensor([[5, 6], [7, 8]]), torch.tensor([[0, 15], [3, 4]])
    grid = fill_grid(ids, positions, GRID, torch.tensor(9))
    assert grid.shape == (2, 4, 4)
    flat = grid.flatten(1)
    assert flat[0, 0] == 5 and flat[0, 15] == 6 and flat[1, 3] == 7 and flat[1, 4] == 8
    assert (flat == 9).sum() == 2 * 14


def test_fill_grid_of_pixel_patches_fills_whole_patches():
    ids = torch.full((1, 2, 3), 200, dtype=torch.uint8)
    grid = fill_grid(ids, torch.tensor([[1, 2]]), GRID, torch.tensor([1, 2, 3], dtype=torch.uint8))
    assert grid.shape == (1, 4, 4, 3) and grid.dtype == torch.uint8
    flat = grid.reshape(16, 3)
    assert flat[1].tolist() == [200] * 3 and flat[0].tolist() == [1, 2, 3]


def test_fill_values():
    units = np.array([[[1, 2], [2, 2]], [[3, 2], [1, 1]]])
    assert int(fill_value(units, "frequent", 8)) == 2
    assert int(fill_value(units, "mask", 8)) == 8  # one past the codebook: the model's mask embedding
    patches = np.stack([np.full((2, 2, 3), 10, np.uint8), np.full((2, 2, 3), 21, np.uint8)])
    assert fill_value(patches, "mean", 0).tolist() == [16, 16, 16]  # 15.5 rounds to even


def test_step_schedule_draws_rows_with_replacement_from_the_shared_generator():
    memory = _memory()
    units, positions, labels = _replay(memory, seed=3).sample(0, 0)
    expected = torch.randint(10, (4,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(units, torch.from_numpy(memory.ids)[expected])
    assert torch.equal(positions, torch.from_numpy(memory.positions)[expected])
    assert torch.equal(labels, torch.from_numpy(memory.labels)[expected])


def test_epoch_schedule_replays_every_row_once_per_epoch_and_reshuffles():
    memory = _memory(rows=10)
    replay = _replay(memory, schedule="epoch", steps_per_epoch=4, seed=1)
    epochs = []
    for epoch in range(2):
        rows = [replay.rows(epoch, b) for b in range(4)]
        assert all(r is not None for r in rows)
        epochs.append(torch.cat(rows))
        assert sorted(epochs[-1].tolist()) == list(range(10))
    assert not torch.equal(epochs[0], epochs[1])
    # a fresh object (a resumed job) at the same epoch and step gives the same rows: no state of its own
    assert torch.equal(_replay(memory, schedule="epoch", steps_per_epoch=4, seed=1).rows(1, 2), replay.rows(1, 2))


def test_epoch_schedule_with_fewer_rows_than_steps_skips_steps():
    replay = _replay(_memory(rows=3), schedule="epoch", steps_per_epoch=6)
    rows = [replay.rows(0, b) for b in range(6)]
    assert sum(r is not None for r in rows) == 3
    assert sorted(torch.cat([r for r in rows if r is not None]).tolist()) == [0, 1, 2]
    assert replay.weighted and not _replay(_memory()).weighted


def test_fill_view_replays_whole_grids():
    memory = _memory()
    units, positions, _ = _replay(memory, view="fill", fill=torch.tensor(9)).sample(0, 0)
    assert positions is None and units.shape == (4, 4, 4)
    assert ((units != 9).flatten(1).sum(1) <= 3).all()  # at most the 3 kept tokens differ from the fill


def test_batch_dropout_feeds_memory_length_subsets_or_filled_grids():
    units = torch.randint(0, 8, (5, 4, 4))
    sub, pos = _replay(_memory(), input_dropout=1.0).current(units)
    assert sub.shape == (5, 3) and pos.shape == (5, 3)
    assert torch.equal(sub, units.flatten(1).gather(1, pos))
    filled, none = _replay(_memory(), input_dropout=1.0, view="fill", fill=torch.tensor(99)).current(units)
    assert none is None and filled.shape == (5, 4, 4)
    assert ((filled != 99).flatten(1).sum(1) == 3).all()


def test_batch_dropout_is_off_without_memory_but_token_dropout_is_on_from_task_0():
    units = torch.randint(0, 8, (5, 4, 4))
    whole, pos = _replay(Memory.empty(), input_dropout=1.0).current(units)
    assert pos is None and torch.equal(whole, units)
    sub, pos = _replay(Memory.empty(), input_dropout=0.5, dropout_mode="token").current(units)
    assert pos is not None and sub.shape[1] == pos.shape[1] < 16
    assert (pos.diff(dim=1) > 0).all()  # distinct positions, ascending


def test_token_dropout_rates():
    units = torch.randint(1, 8, (2000, 4, 4))
    filled, _ = _replay(Memory.empty(), input_dropout=0.75, dropout_mode="token", view="fill", fill=torch.tensor(0)).current(units)
    assert abs((filled == 0).float().mean().item() - 0.75) < 0.02  # each token its own coin
    replay = _replay(Memory.empty(), input_dropout=0.75, dropout_mode="token")
    lengths = [replay.current(units[:2])[1].shape[1] for _ in range(400)]
    assert abs(np.mean(lengths) - 4.0) < 0.3  # Binomial(16, 0.25) per batch


@pytest.mark.parametrize("view", ["subset", "fill"])
def test_views_of_a_memory_are_what_replay_feeds(view):
    memory = _memory()
    replay = _replay(memory, view=view, fill=torch.tensor(9))
    units, positions = replay.views(memory)
    assert len(units) == len(memory)
    assert (positions is None) == (view == "fill")
