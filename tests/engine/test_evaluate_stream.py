"""engine/evaluate.py streamed over a token file gives the row the whole-test-set evaluation gave; engine/loop.py keeps
a rank's slice of narrow ids on its device and widens each batch."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenforge import families
from tokenforge.data import tokens as tokens_module
from tokenforge.data.tokens import TokenSet, load_tokens, save_tokens
from tokenforge.engine.evaluate import accuracy_row, evaluate_split, predict
from tokenforge.engine.loop import rank_slice, rank_units, widened
from tokenforge.errors import TokenforgeError

TASKS = [{"task": 0, "classes": [0, 1, 2]}, {"task": 1, "classes": [3, 4]}, {"task": 2, "classes": [5, 6, 7]}]


class IdModel(torch.nn.Module):
    """Logits from an embedding of the ids (mean over the grid): a deterministic stand-in that needs long ids."""

    def __init__(self, num_codes, num_classes=8):
        super().__init__()
        self.table = torch.nn.Embedding(num_codes, num_classes)
        torch.nn.init.normal_(self.table.weight, generator=torch.Generator().manual_seed(0))
        self.config = SimpleNamespace(num_classes=num_classes, input="tokens", patch=1)
        self.dtypes = set()

    def forward(self, units):
        self.dtypes.add(units.dtype)
        return self.table(units).mean((1, 2))


def previous_row(model, units, labels, tasks, after, batch_size):
    """The row as engine/evaluate.py computed it before streaming: every prediction first, then a mean per task."""
    seen = [c for t in tasks[: after + 1] for c in t["classes"]]
    preds = predict(model, units, families.get("classification", num_classes=model.config.num_classes, seen=seen), batch_size)
    accuracy, counts = [], []
    for t in tasks:
        mask = np.isin(labels, t["classes"])
        accuracy.append(float((preds[mask] == labels[mask]).mean()))
        counts.append(int(mask.sum()))
    return {"task": after, "accuracy": accuracy, "num_test": counts, "seen_classes": seen,
            "average_accuracy": float(np.mean(accuracy[: after + 1]))}


@pytest.mark.parametrize("num_codes", [64, 391])
@pytest.mark.parametrize("after", [0, 2])
def test_the_streamed_row_equals_the_whole_set_row(tmp_path, monkeypatch, num_codes, after):
    monkeypatch.setattr(tokens_module, "READ_ELEMENTS", 300 * 16)  # record batches of 300 rows: not batch-aligned
    rng = np.random.default_rng(1)
    n = 2000
    labels = rng.integers(0, 9, n)  # class 8 is in no task: predicted, never counted
    ids = rng.integers(0, num_codes, (n, 4, 4))
    path = tmp_path / "test.parquet"
    save_tokens(path, TokenSet([f"k{i}" for i in range(n)], labels, ids), num_codes)
    model = IdModel(num_codes)
    test = load_tokens(path)
    before = previous_row(model, test.ids, test.labels, TASKS, after, batch_size=128)
    row, samples = evaluate_split(model, path, None, TASKS, after, batch_size=128)
    assert row == before and samples == n
    assert model.dtypes == {torch.int64}  # narrow ids were widened before the model
    assert accuracy_row(model, test.ids, test.labels, TASKS, after, batch_size=128) == before


def test_a_task_without_test_samples_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "test.parquet"
    save_tokens(path, TokenSet(["a", "b"], np.array([0, 1]), np.zeros((2, 4, 4), np.int64)), 16)
    with pytest.raises(TokenforgeError, match="test.parquet: no test samples for task 1's classes"):
        evaluate_split(IdModel(16), path, None, TASKS, 0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_rank_keeps_its_slice_of_narrow_ids_and_widens_batches(world):
    ids = np.random.default_rng(0).integers(0, 65536, (10, 2, 2)).astype(np.uint16)
    for rank in range(world):
        local = rank_slice(len(ids), rank, world)
        units, slot = rank_units(ids, local, torch.device("cpu"))
        assert len(units) == len(local) and units.dtype == torch.int16
        at = local if slot is None else slot[local]
        batch = widened(units[at])
        assert batch.dtype == torch.int64 and np.array_equal(batch.numpy(), ids[local.numpy()].astype(np.int64))
    patches = torch.zeros(3, 2, 2, 5, dtype=torch.uint8)
    assert widened(patches) is patches  # pixel patches stay as they are
