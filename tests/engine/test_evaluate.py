"""engine/evaluate.py: a row of the accuracy matrix, with predictions restricted to the classes seen so far."""

import numpy as np
import pytest
import torch

from tokenforge import families
from tokenforge.engine.evaluate import accuracy_row, predict
from tokenforge.errors import TokenforgeError

TASKS = [{"task": 0, "classes": [0, 1]}, {"task": 1, "classes": [2, 3]}]


class FixedLogits(torch.nn.Module):
    """A stand-in model: unit i of the input picks row i of a logits table (so each sample's logits are chosen)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32), requires_grad=False)
        self.config = type("Config", (), {"num_classes": self.table.shape[1]})()

    def forward(self, units):
        return self.table[units[:, 0, 0]]


def test_predictions_never_name_a_class_not_seen_yet():
    # Sample 0 prefers unseen class 3 by far; among the seen classes {0, 1} it prefers 1.
    model = FixedLogits([[0.0, 1.0, 0.0, 50.0], [2.0, 0.0, 9.0, 0.0]])
    units = np.array([0, 1]).reshape(2, 1, 1)
    family = families.get("classification", num_classes=4, seen=[0, 1])
    assert predict(model, units, family).tolist() == [1, 0]
    family = families.get("classification", num_classes=4, seen=[0, 1, 2, 3])
    assert predict(model, units, family).tolist() == [3, 2]


def test_accuracy_row_counts_each_task_and_averages_the_seen_ones():
    # Labels 0, 1 (task 0) and 2, 3 (task 1). The model's favourite is class 2 for samples 0 and 2, class 3 for 1 and 3;
    # its second choice is right for task 0's samples.
    model = FixedLogits([[9.0, 0.0, 10.0, 0.0], [0.0, 9.0, 0.0, 10.0], [0.0, 0.0, 10.0, 0.0], [0.0, 0.0, 0.0, 10.0]])
    units = np.arange(4).reshape(4, 1, 1)
    labels = np.array([0, 1, 2, 3])
    after_0 = accuracy_row(model, units, labels, TASKS, after=0)
    assert after_0["accuracy"] == [1.0, 0.0]  # classes 2 and 3 are masked: task 0 right, task 1 cannot be
    assert after_0["average_accuracy"] == 1.0 and after_0["seen_classes"] == [0, 1] and after_0["num_test"] == [2, 2]
    after_1 = accuracy_row(model, units, labels, TASKS, after=1)
    assert after_1["accuracy"] == [0.0, 1.0]  # now the favourites win: task 0 forgotten
    assert after_1["average_accuracy"] == 0.5


def test_a_task_without_test_samples_is_an_error_naming_the_source():
    model = FixedLogits([[1.0, 0.0, 0.0, 0.0]])
    with pytest.raises(TokenforgeError, match="test.parquet: no test samples for task 1"):
        accuracy_row(model, np.zeros((1, 1, 1), dtype=np.int64), np.array([0]), TASKS, after=0, source="test.parquet")
