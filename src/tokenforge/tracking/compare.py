"""Reading pipeline runs back from MLflow for `tokenforge compare` (tokenforge/cli/compare.py): which stores to
read (each results folder's own SQLite store, never created here, or a server), one row per parent run with its
memory, seed and headline metrics (from the parent run, else its `package` job), sorting, and the aligned text
table and CSV. A "-" is a value not logged (yet).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from tokenforge.errors import TokenforgeError
from tokenforge.report import HEADLINE_METRICS
from tokenforge.tracking.base import mlflow_client, store_call

log = logging.getLogger(__name__)

# The headline metrics `tokenforge package` logs (tokenforge.report.HEADLINE_METRICS) that the table shows: all
# but backward_transfer.
METRICS = tuple(h.name for h in HEADLINE_METRICS if h.name != "backward_transfer")
PERCENT = tuple(h.name for h in HEADLINE_METRICS if h.unit == "fraction")
BYTES = tuple(h.name for h in HEADLINE_METRICS if h.unit == "bytes")
SECONDS = tuple(h.name for h in HEADLINE_METRICS if h.unit == "seconds")
# Column -> the parent run's param (the flattened resolved config).
PARAMS = {"family": "family", "method": "memory.method", "budget": "memory.budget", "seed": "seed"}
COLUMNS = ("run", "status", *PARAMS, *METRICS, "start_time", "run_id")
TEXT = ("run", "status", *PARAMS, "run_id")
MISSING = "-"
PACKAGE_RULE = "package"
# A query tool should fail fast on an unreachable server (MLflow's defaults retry for minutes); the user's own
# settings of these variables win.
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


# --- stores -----------------------------------------------------------------------------------


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for other URIs and in-memory databases)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri.split("://", 1)[-1].split("?", 1)[0]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:])  # sqlite:////abs/x.db -> /abs/x.db, sqlite:///rel/x.db -> rel/x.db


def local_store_uri(results_dir: str | os.PathLike) -> str:
    """The SQLite store the pipeline keeps inside RESULTS_DIR; its absence is an error (it is never created)."""
    results_dir = Path(results_dir)
    db = results_dir.resolve() / "mlflow.db"
    if not db.is_file():
        hint = ""
        parent = results_dir / "mlflow" / "parent.json"
        with contextlib.suppress(Exception):
            elsewhere = json.loads(parent.read_text())["tracking_uri"]
            if sqlite_path(elsewhere) != db:
                hint = f"; this run logged to {elsewhere}: pass --tracking-uri {elsewhere}"
        raise TokenforgeError(f"{results_dir / 'mlflow.db'}: no MLflow store in this results folder{hint}")
    return f"sqlite:///{db}"


def check_store(uri: str) -> None:
    """Reading must not create a store: a local URI has to name an existing file or folder."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise TokenforgeError(f"MLflow store {uri}: no such SQLite file {path} (reading never creates one)")
    parsed = urlparse(uri)
    if parsed.scheme == "file" or (not parsed.scheme and "/" in uri):  # MLflow's file store: a folder (or a plain path)
        folder = Path(parsed.path if parsed.scheme else uri)
        if not folder.is_dir():
            raise TokenforgeError(f"MLflow store {uri}: no such folder {folder} (reading never creates one)")


def store_uris(results_dirs: list[str], tracking_uri: str | None) -> list[str]:
    """The stores to read, each once, in the order given."""
    uris = [local_store_uri(d) for d in results_dirs]
    if tracking_uri is None and not results_dirs:
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:
            raise TokenforgeError("no store to read: give RESULTS_DIR(s), --tracking-uri URI or set MLFLOW_TRACKING_URI")
    if tracking_uri:
        check_store(tracking_uri)
        uris.append(tracking_uri)
    return list(dict.fromkeys(uris))


@contextlib.contextmanager
def quick_http() -> Iterator[None]:
    """MLflow's HTTP settings of QUICK_HTTP while the block runs (where the user set none), restored after."""
    saved = {key: os.environ.get(key) for key in QUICK_HTTP}
    for key, value in QUICK_HTTP.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


# --- rows -------------------------------------------------------------------------------------


def find_experiment(client, uri: str, name: str):
    """The active experiment `name` in the store; unknown or deleted is an error that lists what is there."""
    exp = store_call(uri, "read the MLflow store", client.get_experiment_by_name, name)
    if exp is None or exp.lifecycle_stage != "active":
        names = [e.name for e in store_call(uri, "list experiments", client.search_experiments)]
        state = "is deleted" if exp is not None else "not found"
        raise TokenforgeError(f"--experiment {name!r}: {state} in {uri} (experiments there: {', '.join(names) or 'none'})")
    return exp


def _runs(client, uri: str, experiment_id: str) -> Iterator:
    """Every active run of the experiment, oldest first, page by page."""
    token = None
    while True:
        page = store_call(
            uri,
            "search runs",
            client.search_runs,
            [experiment_id],
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def collect_rows(uri: str, experiment: str) -> list[dict[str, Any]]:
    """One row per parent run (a run without mlflow.parentRunId) of the experiment in the store at `uri`."""
    client = store_call(uri, "open the MLflow store", mlflow_client, uri)
    exp = find_experiment(client, uri, experiment)
    parents, packages = [], {}
    for run in _runs(client, uri, exp.experiment_id):
        tags = run.data.tags
        parent_id = tags.get("mlflow.parentRunId")
        if parent_id is None:
            parents.append(run)
        elif tags.get("rule") == PACKAGE_RULE and _better_package(run, packages.get(parent_id)):
            packages[parent_id] = run
    return [run_row(parent, packages.get(parent.info.run_id)) for parent in parents]


def _better_package(run, current) -> bool:
    """A FINISHED package job beats an unfinished one; among equals the later one (a rerun) wins."""
    if current is None:
        return True
    rank = (run.info.status == "FINISHED", run.info.start_time or 0)
    return rank >= (current.info.status == "FINISHED", current.info.start_time or 0)


def run_row(parent, package=None) -> dict[str, Any]:
    """The table row of a parent run; metrics the parent lacks come from its package job (None: not logged)."""
    params = parent.data.params
    metrics = {**(package.data.metrics if package is not None else {}), **parent.data.metrics}
    row: dict[str, Any] = {
        "run": parent.info.run_name or parent.data.tags.get("mlflow.runName"),
        "status": parent.info.status,
    }
    for column, key in PARAMS.items():
        value = params.get(key)
        row[column] = None if value in (None, "", "None") else value
    for key in METRICS:
        row[key] = metrics.get(key)
    row["start_time"] = parent.info.start_time
    row["run_id"] = parent.info.run_id
    return row


def _sort_key(value: Any) -> tuple:
    # Numbers (and numeric params such as seed "10" or budget "10%") by value, other text alphabetically.
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    text = str(value)
    with contextlib.suppress(ValueError):
        return (0, float(text.rstrip("%")), text)
    return (1, 0.0, text)


def sort_rows(rows: list[dict[str, Any]], column: str, ascending: bool = False) -> list[dict[str, Any]]:
    """Rows by `column`, largest first unless `ascending`; rows missing it last, ties in their original order."""
    if column not in COLUMNS:
        raise TokenforgeError(f"--sort {column!r}: unknown column; expected one of {', '.join(COLUMNS)}")
    present = [r for r in rows if r.get(column) is not None]
    missing = [r for r in rows if r.get(column) is None]
    return sorted(present, key=lambda r: _sort_key(r[column]), reverse=not ascending) + missing


# --- output -----------------------------------------------------------------------------------


def _local_time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone()


def _headline_is_share(family: str | None) -> bool:
    """Whether a family's headline score is a share (accuracy, VQA accuracy) or a plain number (captioning's CIDEr-D):
    the family says (`headline_is_share`); a family not installed here counts as a share."""
    from tokenforge.errors import TokenforgeError
    from tokenforge.families import FAMILIES

    try:
        return bool(getattr(FAMILIES.load(family), "headline_is_share", True)) if family else True
    except TokenforgeError:
        return True


def format_cell(column: str, value: Any, family: str | None = None) -> str:
    """A value as shown in the table: accuracies as percentages, bytes with thousands separators; a headline score
    that is not a share (captioning's CIDEr-D) as a plain number."""
    if value is None:
        return MISSING
    if column in PERCENT and not _headline_is_share(family):
        return f"{value:.3f}"
    if column in PERCENT:
        return f"{100 * value:.2f}%"
    if column in BYTES:
        return f"{value:,.0f}"
    if column in SECONDS:
        return f"{value:,.1f}"
    if column == "start_time":
        return _local_time(value).strftime("%Y-%m-%d %H:%M")
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """An aligned text table: text columns left-aligned, numbers right-aligned."""
    cells = [list(COLUMNS)] + [[format_cell(c, row.get(c), row.get("family")) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        parts = [
            cell.ljust(width) if column in TEXT or column == "start_time" else cell.rjust(width)
            for column, cell, width in zip(COLUMNS, line, widths)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def csv_cell(column: str, value: Any) -> str:
    """A value at full precision: floats as repr, whole byte counts as integers, times as ISO 8601."""
    if value is None:
        return ""
    if column == "start_time":
        return _local_time(value).isoformat(timespec="milliseconds")
    if column in BYTES and float(value).is_integer():
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The table as CSV (header row = the column names, empty cell = not logged), written atomically."""
    from tokenforge.io import atomic_file

    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([csv_cell(c, row.get(c)) for c in COLUMNS])
