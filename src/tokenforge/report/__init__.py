"""Results of a run.

- `metrics`: the continual-learning metrics of an accuracy matrix (pure NumPy) and a run's headline numbers;
- `package`: the package stage's bundle: metrics.json, the accuracy matrix (CSV, heatmap, table), the learning
  curve, report.html, the final model and config, and its deterministic .tar.gz; the stage's entry points, from
  - `inputs`: the evaluation and stats files, the --stats / --images arguments, the numbers of metrics.json;
  - `plots`: the accuracy heatmap and the learning curve (matplotlib Figures);
  - `html`: report.html;
- `summary`: what `tokenforge summary` prints about a finished run.

The names below are the one place each is listed: the CLI's --help, the modules and `tokenforge.tracking` read them
from here (this file imports nothing heavy, so `--help` stays fast).
"""

from typing import NamedTuple


class Headline(NamedTuple):
    """One headline number of a run."""

    name: str  # its MLflow metric name, also a column of `tokenforge compare`
    path: tuple[str, ...]  # where metrics.json holds it
    unit: str  # "fraction" (shown as a percentage), "bytes" or "seconds"


# What `tokenforge package` logs to MLflow (and `tokenforge log-bundle` backfills from a bundle), in this order.
HEADLINE_METRICS = (
    Headline("final_average_accuracy", ("final_average_accuracy",), "fraction"),
    Headline("average_forgetting", ("average_forgetting",), "fraction"),
    Headline("backward_transfer", ("backward_transfer",), "fraction"),
    Headline("memory_bytes", ("bytes", "memory"), "bytes"),
    Headline("dataset_tokens_bytes", ("bytes", "dataset_tokens"), "bytes"),
    Headline("total_wall_s", ("wall_time_s", "total"), "seconds"),
)
# The accuracy numbers among them: top-level keys of metrics.json, printed by `summary` and the report.
ACCURACY_HEADLINES = tuple(h.name for h in HEADLINE_METRICS if h.unit == "fraction")

# Stats the package stage needs besides train-{t} for every task; other names only add wall times.
REQUIRED_STATS = ("tokenize",)
# Absent when the tokens were imported (a seit: source): their numbers are then null in metrics.json and
# left out of the report; the dataset's image count then comes from the tokenize stats.
OPTIONAL_STATS = ("shard", "tokenizer")
