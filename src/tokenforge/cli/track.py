"""Start or end the pipeline's parent MLflow run (Snakemake's onstart/onsuccess/onerror call this).

  tokenforge track start RESULTS_DIR --experiment NAME --config config.yaml
  tokenforge track end RESULTS_DIR --status FINISHED
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "end"], help="start a new parent run, or end the current one")
    parser.add_argument("results_dir", type=Path, help="the pipeline's results directory")
    parser.add_argument("--experiment", default="tokenforge", help="MLflow experiment name")
    parser.add_argument("--config", type=Path, default=None, help="resolved config YAML, logged as params and artifact")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a SQLite file in RESULTS_DIR)"
    )
    parser.add_argument("--run-name", default=None, help="name of the parent run (default: the results folder name)")
    parser.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"], help="final status for `end`")


def run(args, tracker) -> None:
    import yaml

    from tokenforge.tracking.runs import (
        MlflowTracker,
        _client,
        end_parent,
        flatten,
        start_parent,
    )

    try:
        if args.action == "end":
            end_parent(args.results_dir, args.status)
            return
        config = yaml.safe_load(args.config.read_text()) if args.config else {}
        info = start_parent(
            args.results_dir,
            experiment=args.experiment,
            tracking_uri=args.tracking_uri,
            run_name=args.run_name,
            params=flatten(config or {}),
        )
        if args.config:
            MlflowTracker(_client(info["tracking_uri"]), info["parent_run_id"]).log_artifact(args.config)
        print(f"MLflow parent run {info['parent_run_id']} in {info['tracking_uri']}")
    except Exception as exc:  # tracking never stops the pipeline
        log.warning("MLflow tracking unavailable: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
