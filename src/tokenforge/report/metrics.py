"""Continual-learning metrics of an accuracy matrix (pure NumPy, no I/O), and a run's headline numbers.

`R[i][j]` is the accuracy (in [0, 1]) on task j's test set after training task i, for N tasks, so R
is N x N. Entries with j > i are the model's accuracy on tasks it has not learned yet: they only
enter forward transfer. The definitions follow METHODS.md ("Metrics") and Lopez-Paz & Ranzato
(GEM, 2017) / Chaudhry et al. (RWalk, 2018):

    average accuracy after task i   A_i  = 1/(i+1) * sum_{j<=i} R[i][j]
    final average accuracy          A    = 1/N * sum_j R[N-1][j]        (all tasks are learned)
    forgetting of task j < N-1      f_j  = max_{j<=i<N-1} R[i][j] - R[N-1][j]
    average forgetting              F    = 1/(N-1) * sum_{j<N-1} f_j
    backward transfer               BWT  = 1/(N-1) * sum_{j<N-1} (R[N-1][j] - R[j][j])
    forward transfer                FWT  = 1/(N-1) * sum_{j>0} (R[j-1][j] - b_j)

b_j is the accuracy of a reference model that never trained on task j (e.g. at initialisation).
With a single task there is nothing to forget or transfer: F, BWT and FWT are 0.0.

    >>> R = [[0.9, 0.1], [0.6, 0.8]]
    >>> round(forgetting(R), 3), round(backward_transfer(R), 3)
    (0.3, -0.3)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.report import HEADLINE_METRICS

Matrix = Sequence[Sequence[float]] | np.ndarray
# The largest score a matrix may hold: accuracies lie in [0, 1], captioning's CIDEr-D in [0, 10]. Each score's own
# range is checked where the evaluations are read (report/inputs.py); here only what no score can be.
MAX_SCORE = 10.0


def as_matrix(R: Matrix, name: str = "accuracy_matrix") -> np.ndarray:
    """R as a float64 N x N array; anything else (ragged, not square, outside [0, MAX_SCORE]) is an error."""
    try:
        arr = np.asarray(R, dtype=np.float64)
    except (ValueError, TypeError):
        raise TokenforgeError(f"{name}: expected an N x N matrix of numbers (rows of equal length)") from None
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] == 0:
        raise TokenforgeError(f"{name}: expected a square N x N matrix with N >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > MAX_SCORE:
        raise TokenforgeError(f"{name}: scores must be finite numbers in [0, 1] (accuracies) or [0, {MAX_SCORE:g}] (CIDEr-D)")
    return arr


def average_accuracy(R: Matrix, i: int) -> float:
    """A_i: mean accuracy over the tasks learned so far (0..i), measured after training task i."""
    arr = as_matrix(R)
    if not 0 <= i < arr.shape[0]:
        raise TokenforgeError(f"task {i}: out of range for {arr.shape[0]} tasks")
    return float(arr[i, : i + 1].mean())


def average_accuracies(R: Matrix) -> list[float]:
    """[A_0, ..., A_{N-1}]: the learning curve of the class-incremental run."""
    arr = as_matrix(R)
    return [average_accuracy(arr, i) for i in range(arr.shape[0])]


def final_average_accuracy(R: Matrix) -> float:
    """A = mean of the last row: accuracy over all tasks after training all of them."""
    return float(as_matrix(R)[-1].mean())


def forgetting_per_task(R: Matrix) -> list[float]:
    """[f_0, ..., f_{N-2}]: how far each task fell from its best accuracy before the last task.

    Only rows i >= j count: before task j is learned its accuracy is not something to forget.
    """
    arr = as_matrix(R)
    last = arr.shape[0] - 1
    return [float(arr[j:last, j].max() - arr[last, j]) for j in range(last)]


def forgetting(R: Matrix) -> float:
    """F: average forgetting over the tasks before the last one (0.0 for a single task)."""
    per_task = forgetting_per_task(R)
    return float(np.mean(per_task)) if per_task else 0.0


def backward_transfer(R: Matrix) -> float:
    """BWT: mean change of each earlier task's accuracy from just after learning it to the end.

    Negative means forgetting; positive means later tasks helped earlier ones (0.0 for one task).
    """
    arr = as_matrix(R)
    last = arr.shape[0] - 1
    if last == 0:
        return 0.0
    return float(np.mean([arr[last, j] - arr[j, j] for j in range(last)]))


def forward_transfer(R: Matrix, baseline: Sequence[float] | None = None) -> float | None:
    """FWT: mean accuracy on task j just before learning it, above the reference b_j.

    Without a baseline there is no reference to compare to, so the result is None.
    """
    if baseline is None:
        return None
    arr = as_matrix(R)
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (arr.shape[0],):
        raise TokenforgeError(f"baseline: expected {arr.shape[0]} accuracies (one per task), got shape {b.shape}")
    if arr.shape[0] == 1:
        return 0.0
    return float(np.mean([arr[j - 1, j] - b[j] for j in range(1, arr.shape[0])]))


def summarize(R: Matrix, baseline: Sequence[float] | None = None) -> dict:
    """Every metric above in one JSON-ready dict (plain Python floats and lists)."""
    arr = as_matrix(R)
    return {
        "num_tasks": int(arr.shape[0]),
        "accuracy_matrix": arr.tolist(),
        "average_accuracy": average_accuracies(arr),
        "final_average_accuracy": final_average_accuracy(arr),
        "forgetting_per_task": forgetting_per_task(arr),
        "average_forgetting": forgetting(arr),
        "backward_transfer": backward_transfer(arr),
        "forward_transfer": forward_transfer(arr, baseline),
    }


def headline_metrics(result: dict) -> dict[str, float]:
    """The headline numbers (tokenforge.report.HEADLINE_METRICS) of a metrics.json dict, under their MLflow names.

    `tokenforge package` logs these and `tokenforge log-bundle` backfills them; absent or non-numeric ones
    (a bundle from an older version) are left out.
    """
    numbers = {}
    for headline in HEADLINE_METRICS:
        value: Any = result
        for key in headline.path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[headline.name] = value
    return numbers


def control_rows(result: dict) -> list[tuple[str, str, list[tuple[str, float, float, float]]]]:
    """Each control beside the run (metrics.json "controls", e.g. the blind control of a VQA run): (control, score,
    rows), a row per task j: (task label, the run's score just after learning j (`R[j][j]`), after the last task
    (`R[N-1][j]`), the control's), then their means over tasks as a row labelled "average". The score is the run's
    headline one (metrics.json "metric")."""
    metric = result.get("metric") or "accuracy"
    R = np.asarray(((result.get("score_matrices") or {}).get(metric) or {}).get("accuracy_matrix") or result["accuracy_matrix"])
    groups = result.get("groups") or []
    out = []
    for name, control in (result.get("controls") or {}).items():
        values = control["scores"].get(metric)
        if values is None:
            continue
        labels = [f"{j}" + (f" ({'+'.join(groups[j])})" if j < len(groups) else "") for j in range(len(values))]
        rows = [(labels[j], float(R[j, j]), float(R[-1, j]), float(v)) for j, v in enumerate(values)]
        out.append((name, metric, [*rows, ("average", *(float(np.mean([r[k] for r in rows])) for k in (1, 2, 3)))]))
    return out


def control_other_scores(result: dict, name: str) -> list[tuple[str, float, float]]:
    """The run's other scores beside control `name`'s (e.g. captioning's count accuracy, which the blind control
    cannot have): (score, the run's final average, the control's average over the tasks)."""
    control, metric = result["controls"][name], result.get("metric")
    matrices = result.get("score_matrices") or {}
    return [(score, matrices[score]["final_average_accuracy"], value)
            for score, value in control["average_scores"].items() if score != metric and score in matrices]  # fmt: skip
