"""What `tokenforge summary` (tokenforge/cli/summary.py) prints about a finished run: its headline metrics
from package/metrics.json, its replay memory against the token and pixel bytes, and where its MLflow runs are
(mlflow/parent.json); about an experiment folder: how many variants finished, its comparison table
(tokenforge.report.experiment) and where the comparison files are.
"""

from __future__ import annotations

from pathlib import Path

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json
from tokenforge.report import ACCURACY_HEADLINES
from tokenforge.report.experiment import FILES, status_line, text_table
from tokenforge.report.metrics import control_other_scores, control_rows

ARCHIVE = "tokenforge-results.tar.gz"
# Every summary line starts with its label padded to this width (the fixed lines below are aligned by hand).
LABEL_WIDTH = 24


def load_metrics(results: Path) -> dict:
    """metrics.json of the run; its absence means the pipeline has not reached `package` yet."""
    path = results / "package" / "metrics.json"
    if not path.is_file():
        raise TokenforgeError(
            f"{path}: not found; the pipeline has not finished: run `make run` (or `snakemake`) first"
        )
    result = read_json(path)
    for key in ("num_tasks", *ACCURACY_HEADLINES, "bytes"):
        if not isinstance(result, dict) or key not in result:
            raise TokenforgeError(f"{path}: missing key {key!r}; rerun `tokenforge package`")
    return result


def load_parent(results: Path) -> dict | None:
    """The MLflow parent run of this results folder ({tracking_uri, experiment_id, parent_run_id}), if any."""
    path = results / "mlflow" / "parent.json"
    if not path.is_file():
        return None
    parent = read_json(path)
    if not isinstance(parent, dict) or "tracking_uri" not in parent:
        raise TokenforgeError(f"{path}: expected a JSON object with 'tracking_uri'")
    return parent


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _headline(result: dict, name: str) -> str:
    """A headline number: a percentage of accuracy, or the score a VQA/captioning run names (CIDEr is no fraction)."""
    metric = result.get("metric")
    if metric == "cider":
        return "n/a" if result[name] is None else f"{result[name]:.3f} (CIDEr-D)"
    return _pct(result[name]) + (f" ({metric.replace('_', ' ')})" if metric else "")


def memory_lines(b: dict, memory: dict | None = None) -> list[str]:
    """The replay memory in bytes, per dataset image, and as a share of the dataset's token bytes."""
    what = ""
    if memory and memory.get("method"):
        budget = memory.get("budget_bytes")
        what = f" ({memory['method']}: {memory.get('samples') or 0} samples x {memory.get('tokens_per_sample') or 0} tokens"
        what += f", budget {budget:,})" if budget else ")"
    lines = [f"  replay memory:          {b['memory']:,} bytes after the last task{what}"]
    images, tokens = b.get("dataset_images"), b.get("dataset_tokens")
    if images and tokens:
        # memory / dataset_tokens == (memory per dataset image) / (token bytes per image)
        lines.append(
            f"                          {b['memory'] / images:,.1f} bytes per dataset image = "
            f"{_pct(b['memory'] / tokens)} of the token bytes ({tokens:,} bytes for {images:,} images)"
        )
    return lines


def score_lines(result: dict) -> list[str]:
    """VQA and captioning: every score's task matrix (row: after task t; column: task j), then its summary."""
    lines = []
    groups = result.get("groups") or []
    for name, summary in (result.get("score_matrices") or {}).items():
        M = summary["accuracy_matrix"]
        lines.append(f"  {name} matrix (row: after task t, column: task j" + (", " + "; ".join(
            f"{j}: {'+'.join(g)}" for j, g in enumerate(groups)) if groups else "") + ")")  # fmt: skip
        for t, row in enumerate(M):
            lines.append(f"    after task {t}: " + " ".join(f"{v:7.3f}" if j <= t else "      ." for j, v in enumerate(row)))
        lines.append(f"    final average {summary['final_average_accuracy']:.3f}, forgetting {summary['average_forgetting']:.3f}, "
                     f"backward transfer {summary['backward_transfer']:.3f}")  # fmt: skip
    return lines


def control_lines(result: dict) -> list[str]:
    """The run's score per task beside each control's (e.g. the blind control: the same model given no image,
    trained on every task at once): a task the run scores no better on is answered from the question alone."""
    lines = []
    for name, metric, rows in control_rows(result):
        lines.append(f"  {metric} against the {name} control (trained on every task at once)")
        width = max(len(r[0]) for r in rows) + 5
        lines.append(f"    {'task':<{width}}{'just learned':>13}{'after last':>12}{name:>9}{'learned - ' + name:>{11 + len(name)}}")
        for label, learned, final, control in rows:
            lines.append(f"    {label:<{width}}{learned:13.3f}{final:12.3f}{control:9.3f}{learned - control:+{11 + len(name)}.3f}")
        others = control_other_scores(result, name)  # final averages: the run's, the control's
        pad = max([width] + [len(score) + 2 for score, _, _ in others])
        lines += [f"    {score + ':':<{pad}}final average {final:.3f}, {name} {value:.3f}" for score, final, value in others]
    return lines


def mlflow_lines(parent: dict | None) -> list[str]:
    """Where the runs are tracked and how to look at them."""
    if parent is None:
        return ["  MLflow:                 not tracked (no mlflow/parent.json in the results folder)"]
    uri = parent["tracking_uri"]
    lines = [
        f"  MLflow tracking URI:    {uri}",
        f"  MLflow experiment id:   {parent.get('experiment_id')}",
        f"  MLflow parent run id:   {parent.get('parent_run_id')}",
    ]
    if parent.get("mode") == "deferred" and not parent.get("parent_run_id"):  # spooled, not in the store yet
        lines[1:] = ["  MLflow runs:            deferred, not synced yet: tokenforge track sync RESULTS_DIR writes them"]
    if uri.startswith(("http://", "https://")):
        lines.append(f"  open the UI:            {uri} in a browser")
    else:
        # A local store (sqlite:///..., file:...) is served by a UI started on this machine.
        lines.append(f"  open the UI:            mlflow ui --backend-store-uri {uri}")
    return lines


def summary_lines(results: Path, result: dict, parent: dict | None) -> list[str]:
    """The human summary, one line per fact."""
    archive = results / ARCHIVE
    lines = [
        f"tokenforge results in {results} ({result['num_tasks']} tasks)",
        *(f"  {name.replace('_', ' ') + ':':<{LABEL_WIDTH}}{_headline(result, name)}" for name in ACCURACY_HEADLINES),
    ]
    lines += score_lines(result)
    lines += control_lines(result)
    lines += memory_lines(result["bytes"], result.get("memory"))
    lines += [
        f"  report:                 {results / 'package' / 'report.html'}",
        f"  bundle:                 {archive}" + ("" if archive.is_file() else " (not written yet)"),
    ]
    return lines + mlflow_lines(parent)


def experiment_lines(folder: Path, comp: dict) -> list[str]:
    """An experiment: its name and finished variants, the group table, and where its comparison files are."""
    lines = [f"tokenforge {status_line(comp)} in {folder}", *("  " + line for line in text_table(comp).splitlines())]
    missing = [name for name in FILES if not (folder / name).is_file()]
    for name in FILES:
        note = " (not written yet)" if name in missing else ""
        lines.append(f"  {name + ':':<{LABEL_WIDTH}}{folder / name}{note}")
    if missing:
        lines.append(f"  write them with:        tokenforge compare {folder} --out {folder}")
    return lines
