"""Print what a finished run achieved and where its report, bundle and MLflow runs are.

Reads RESULTS_DIR/package/metrics.json (written by `tokenforge package`, the last pipeline stage)
and, if present, RESULTS_DIR/mlflow/parent.json. Writes nothing. Example:

    tokenforge summary results/default          # human summary
    tokenforge summary results/default --json   # the metrics.json itself, for scripts
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="results folder of one pipeline run")
    parser.add_argument("--json", action="store_true", help="print metrics.json instead of the summary")


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.report.summary import load_metrics, load_parent, summary_lines

    results = Path(args.results_dir).resolve()
    result = load_metrics(results)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    mlflow_parent = load_parent(results)
    print("\n".join(summary_lines(results, result, mlflow_parent)))
