"""The package stage's plots, drawn on bare matplotlib Figures (no pyplot state, no display): the accuracy matrix
heatmap and the average accuracy after each task. `tokenforge.report.package` writes them as PNG.

The heatmap leaves the cells above the diagonal empty: row t is measured after training task t, so column j > t is
a task not learned yet (the CSV and metrics.json keep every measured cell).
"""

from __future__ import annotations

import numpy as np


def _figure(width: float, height: float):
    # A bare Figure with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def learned(R: np.ndarray) -> np.ndarray:
    """Boolean mask of the cells of R on or below the diagonal: tasks learned by the time of the row.

    Row t is measured after training task t, so a cell (t, j > t) is a task not trained yet: the heatmap
    and the report's table leave it empty (the CSV and metrics.json keep its measured accuracy).
    """
    return np.tri(*np.shape(R), dtype=bool)


def accuracy_matrix_figure(R: np.ndarray):
    """Heatmap of R with each accuracy written in its cell; cells of tasks not trained yet are left empty."""
    n = R.shape[0]
    fig = _figure(1.6 + 0.7 * n, 1.2 + 0.6 * n)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_array(R, mask=~learned(R)), vmin=0.0, vmax=1.0, cmap="viridis")
    fontsize = max(5, 11 - n // 3)
    for i, j in zip(*np.nonzero(learned(R))):
        # Dark text on the bright end of viridis, white on the dark end.
        color = "black" if R[i, j] > 0.6 else "white"
        ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", color=color, fontsize=fontsize)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title("accuracy matrix")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    return fig


def average_accuracy_figure(values: list[float]):
    """Average accuracy over the tasks seen so far, after each task."""
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot()
    ax.plot(range(len(values)), values, marker="o")
    ax.set_xticks(range(len(values)))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("after training task")
    ax.set_ylabel("average accuracy (tasks seen)")
    ax.set_title("average accuracy after each task")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
