"""Print what a finished run (or experiment) achieved and where its report, bundle and MLflow runs are.

Reads RESULTS_DIR/package/metrics.json (written by `tokenforge package`, the last pipeline stage)
and, if present, RESULTS_DIR/mlflow/parent.json. An experiment folder (RESULTS_DIR/experiment.json):
its name, how many variants finished, the comparison table of `tokenforge compare` (mean ± std over
seeds) and where its comparison files are. Writes nothing. Examples:

    tokenforge summary results/default          # human summary
    tokenforge summary results/default --json   # the metrics.json itself, for scripts
    tokenforge summary results/coretokens       # an experiment: its comparison table
    tokenforge summary results/coretokens --json   # the experiment's comparison (groups and variants)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="results folder of one pipeline run or experiment")
    parser.add_argument(
        "--json", action="store_true", help="print metrics.json (an experiment: its comparison) instead of the summary"
    )


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.report.experiment import comparison, is_experiment
    from tokenforge.report.summary import experiment_lines, load_metrics, load_parent, mlflow_lines, summary_lines

    results = Path(args.results_dir).resolve()
    if is_experiment(results):
        comp = comparison(results)
        lines = [*experiment_lines(results, comp), *mlflow_lines(load_parent(results))]  # a child run per variant
        print(json.dumps(comp, indent=2) if args.json else "\n".join(lines))
        return
    result = load_metrics(results)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    mlflow_parent = load_parent(results)
    print("\n".join(summary_lines(results, result, mlflow_parent)))
