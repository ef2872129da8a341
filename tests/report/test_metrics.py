"""Continual-learning metrics on matrices small enough to check by hand."""

import doctest

import numpy as np
import pytest

from tokenforge.errors import TokenforgeError
from tokenforge.report import metrics

# After task 0: 0.9 on task 0. After task 1: task 0 drops to 0.7. After task 2: 0.5 and 0.6.
# Upper-triangle entries (0.2, 0.1, 0.3) are tasks not learned yet: they only enter forward transfer.
R3 = [
    [0.9, 0.2, 0.1],
    [0.7, 0.8, 0.3],
    [0.5, 0.6, 0.9],
]


def test_average_accuracies_by_hand():
    assert metrics.average_accuracy(R3, 0) == pytest.approx(0.9)
    assert metrics.average_accuracy(R3, 1) == pytest.approx((0.7 + 0.8) / 2)
    assert metrics.average_accuracies(R3) == pytest.approx([0.9, 0.75, (0.5 + 0.6 + 0.9) / 3])
    assert metrics.final_average_accuracy(R3) == pytest.approx(2.0 / 3)


def test_forgetting_takes_the_best_earlier_accuracy():
    # task 0: best before the end 0.9 (row 0), now 0.5 -> 0.4; task 1: best 0.8 (row 1), now 0.6 -> 0.2
    assert metrics.forgetting_per_task(R3) == pytest.approx([0.4, 0.2])
    assert metrics.forgetting(R3) == pytest.approx(0.3)


def test_forgetting_ignores_rows_before_the_task_was_learned():
    # Task 1 scored 0.95 by chance before it was learned (row 0); that is not forgetting.
    R = [[0.9, 0.95], [0.8, 0.7]]
    assert metrics.forgetting_per_task(R) == pytest.approx([0.1])


def test_forgetting_uses_the_maximum_not_the_diagonal():
    # Task 0 improved after task 1 (0.6 -> 0.8), then dropped to 0.5: forgetting 0.3, BWT -0.1.
    R = [[0.6, 0.0, 0.0], [0.8, 0.9, 0.0], [0.5, 0.9, 0.7]]
    assert metrics.forgetting(R) == pytest.approx((0.3 + 0.0) / 2)
    assert metrics.backward_transfer(R) == pytest.approx((-0.1 + 0.0) / 2)


def test_backward_transfer_by_hand():
    # (0.5 - 0.9 + 0.6 - 0.8) / 2
    assert metrics.backward_transfer(R3) == pytest.approx(-0.3)
    # Positive when later tasks help earlier ones.
    assert metrics.backward_transfer([[0.5, 0.0], [0.7, 0.9]]) == pytest.approx(0.2)


def test_forward_transfer_needs_a_baseline():
    assert metrics.forward_transfer(R3) is None
    # (R[0][1] - 0.1 + R[1][2] - 0.1) / 2 = (0.1 + 0.2) / 2
    assert metrics.forward_transfer(R3, [0.1, 0.1, 0.1]) == pytest.approx(0.15)
    with pytest.raises(TokenforgeError, match="baseline: expected 3"):
        metrics.forward_transfer(R3, [0.1, 0.1])


def test_single_task_has_nothing_to_forget():
    R = [[0.8]]
    assert metrics.forgetting(R) == 0.0
    assert metrics.backward_transfer(R) == 0.0
    assert metrics.forward_transfer(R, [0.1]) == 0.0
    assert metrics.final_average_accuracy(R) == pytest.approx(0.8)


def test_summarize_is_json_ready():
    summary = metrics.summarize(np.array(R3))
    assert summary["num_tasks"] == 3
    assert summary["accuracy_matrix"] == R3
    assert summary["average_forgetting"] == pytest.approx(0.3)
    assert summary["backward_transfer"] == pytest.approx(-0.3)
    assert summary["forward_transfer"] is None
    assert all(type(v) is float for v in summary["average_accuracy"])
    assert type(summary["final_average_accuracy"]) is float


@pytest.mark.parametrize(
    "bad, message",
    [
        ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], "square"),
        ([0.5, 0.5], "square"),
        ([], "square"),
        ([[0.5, 0.5], [0.5]], "rows of equal length"),
        ([[0.5, 10.5], [0.5, 0.5]], r"\[0, 10\]"),
        ([[0.5, -0.1], [0.5, 0.5]], r"\[0, 10\]"),
        ([[0.5, float("nan")], [0.5, 0.5]], r"\[0, 10\]"),
    ],
)
def test_bad_matrices_are_refused(bad, message):
    with pytest.raises(TokenforgeError, match=f"accuracy_matrix: .*{message}"):
        metrics.summarize(bad)


def test_cider_matrices_above_one_are_summarised():
    """Captioning's headline matrix is CIDEr-D, which runs from 0 to 10: a well-trained model scores above 1 (found
    when joint training on the scenes reached 1.55); its summary is computed as for accuracies."""
    summary = metrics.summarize([[0.2, 0.1], [1.5, 0.9]])
    assert summary["final_average_accuracy"] == pytest.approx(1.2)
    assert summary["average_forgetting"] == pytest.approx(-1.3) and summary["backward_transfer"] == pytest.approx(1.3)


def test_task_index_out_of_range():
    with pytest.raises(TokenforgeError, match="task 3: out of range"):
        metrics.average_accuracy(R3, 3)


def test_docstring_example():
    result = doctest.testmod(metrics)
    assert result.attempted > 0 and result.failed == 0
