"""Compare pipeline runs tracked in MLflow: one row per parent run with its memory, seed and headline metrics.

Reads each RESULTS_DIR's own store (RESULTS_DIR/mlflow.db, never created here) and/or a tracking
server, and prints one aligned table; metrics come from the parent run, else from its `package` job.
A "-" is a value not logged (yet): a run still in progress, or one that failed. Examples:

    tokenforge compare results/a results/b                         # two pipeline runs, best accuracy first
    tokenforge compare results/a results/b --csv compare.csv       # also the full-precision table as CSV
    tokenforge compare results/* --sort memory_bytes --ascending   # smallest memory first
    tokenforge compare --tracking-uri http://host:5000 --experiment tokenforge
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tokenforge.tracking.compare import COLUMNS

    parser.add_argument(
        "results_dirs",
        nargs="*",
        metavar="RESULTS_DIR",
        help="results folder of a pipeline run; its RESULTS_DIR/mlflow.db is read",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="also read this MLflow store (default: $MLFLOW_TRACKING_URI when no RESULTS_DIR is given)",
    )
    parser.add_argument("--experiment", default="tokenforge", help="MLflow experiment to read in every store")
    parser.add_argument("--csv", default=None, metavar="PATH", help="also write the full-precision table as CSV")
    parser.add_argument(
        "--sort", default="final_average_accuracy", choices=COLUMNS, metavar="COL", help=f"sort by COL: {', '.join(COLUMNS)}"
    )
    parser.add_argument(
        "--ascending", action="store_true", help="sort smallest first (default: largest first); missing values go last"
    )


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.tracking.compare import (
        collect_rows,
        format_table,
        sort_rows,
        store_uris,
        write_csv,
    )
    from tokenforge.tracking.compare import quick_http as _quick_http

    uris = store_uris(args.results_dirs, args.tracking_uri)
    rows: list[dict[str, Any]] = []
    with _quick_http():
        for uri in uris:
            rows += collect_rows(uri, args.experiment)
    rows = sort_rows(rows, args.sort, args.ascending)
    if args.csv:
        write_csv(rows, Path(args.csv))
        log.info("wrote %s (%d runs)", args.csv, len(rows))
    if not rows:
        print(f"no pipeline runs in experiment {args.experiment!r} of {', '.join(uris)}")
        return
    print(format_table(rows))
