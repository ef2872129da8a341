"""Compare pipeline runs tracked in MLflow (one row per parent run), or the variants of an experiment folder.

A RESULTS_DIR of one pipeline run: reads its own store (RESULTS_DIR/mlflow.db, never created here) and/or a
tracking server, and prints one aligned table with each run's memory, seed and headline metrics; metrics come
from the parent run, else from its `package` job. A "-" is a value not logged (yet): a run still in progress,
or one that failed.

An experiment folder (a RESULTS_DIR with experiment.json: a grid of variants): reads each variant's
package/metrics.json, no MLflow, and prints one row per group of variants that differ only in seed, in the
grid's order: mean ± std over the finished seeds (n) of accuracy, forgetting, backward transfer (in %), memory
bytes on disk and wall time. A "-": no variant of the group finished. --out DIR writes comparison.csv,
variants.csv, comparison.md, comparison.json, accuracy_vs_bytes.png and report.html there. Examples:

    tokenforge compare results/a results/b                         # two pipeline runs, best accuracy first
    tokenforge compare results/a results/b --csv compare.csv       # also the full-precision table as CSV
    tokenforge compare results/* --sort memory_bytes --ascending   # smallest memory first
    tokenforge compare --tracking-uri http://host:5000 --experiment tokenforge
    tokenforge compare results/coretokens                          # an experiment: its group table
    tokenforge compare results/coretokens --out results/coretokens -q   # its files, printing nothing
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from tokenforge.errors import TokenforgeError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tokenforge.tracking.compare import COLUMNS

    parser.add_argument(
        "results_dirs",
        nargs="*",
        metavar="RESULTS_DIR",
        help="results folder of a pipeline run (its RESULTS_DIR/mlflow.db is read) or of an experiment "
        "(it holds experiment.json; its variants' metrics.json are read)",
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="also read this MLflow store (default: $MLFLOW_TRACKING_URI when no RESULTS_DIR is given)",
    )
    parser.add_argument("--experiment", default="tokenforge", help="MLflow experiment to read in every store")
    parser.add_argument("--csv", default=None, metavar="PATH", help="also write the full-precision table as CSV")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="one experiment folder: write comparison.csv, variants.csv, comparison.md, comparison.json, "
        "accuracy_vs_bytes.png and report.html into DIR",
    )
    parser.add_argument(
        "--sort",
        default="final_average_accuracy",
        choices=COLUMNS,
        metavar="COL",
        help=f"sort runs by COL: {', '.join(COLUMNS)} (an experiment's groups keep the grid's order)",
    )
    parser.add_argument(
        "--ascending", action="store_true", help="sort smallest first (default: largest first); missing values go last"
    )


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.report.experiment import is_experiment

    experiments = [d for d in args.results_dirs if is_experiment(d)]
    runs = [d for d in args.results_dirs if not is_experiment(d)]
    if experiments:
        _check_outputs(args, len(experiments), bool(runs or args.tracking_uri))
        for i, folder in enumerate(experiments):
            if i and not args.quiet:
                print()  # a blank line between experiments
            compare_experiment(folder, args)
        if not runs and not args.tracking_uri:
            return
    elif args.out:
        raise TokenforgeError("--out DIR: only for an experiment folder (a RESULTS_DIR with experiment.json)")
    compare_runs(runs, args)


def _check_outputs(args: argparse.Namespace, experiments: int, mlflow: bool) -> None:
    """--out takes one experiment folder; --csv, given an experiment folder, that one alone (no MLflow table)."""
    if args.out and experiments > 1:
        raise TokenforgeError(f"--out DIR: give one experiment folder, got {experiments}")
    if args.csv and (experiments > 1 or mlflow):
        raise TokenforgeError("--csv PATH: with an experiment folder, give that one folder alone (no run folders, "
                              "no --tracking-uri)")  # fmt: skip


def compare_experiment(folder: str, args: argparse.Namespace) -> None:
    """The experiment's group table (unless -q); with --out its files, with --csv its comparison.csv."""
    from tokenforge.report.experiment import comparison, status_line, text_table, write_comparison, write_group_csv

    comp = write_comparison(folder, args.out) if args.out else comparison(folder)
    if args.csv:
        write_group_csv(comp, Path(args.csv))
        log.info("wrote %s (%d groups)", args.csv, len(comp["groups"]))
    if not args.quiet:
        print(f"{status_line(comp)}\n{text_table(comp)}")


def compare_runs(results_dirs: list[str], args: argparse.Namespace) -> None:
    """The MLflow table of pipeline runs (the RESULTS_DIRs' own stores and/or --tracking-uri)."""
    from tokenforge.tracking.compare import (
        collect_rows,
        format_table,
        sort_rows,
        store_uris,
        write_csv,
    )
    from tokenforge.tracking.compare import quick_http as _quick_http

    uris = store_uris(results_dirs, args.tracking_uri)
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
