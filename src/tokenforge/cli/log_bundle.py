"""Log a results bundle to MLflow as one finished parent run: the backfill path after a tracking outage.

BUNDLE is a tokenforge-results.tar.gz, or the unpacked tokenforge-results/ folder (results/<run>/package/
is one, too). Its config.yaml becomes the run's params, metrics.json its headline metrics and the learning
curve (average_accuracy, one step per task), every file an artifact. The run is tagged source=bundle and
bundle_sha256 (of the .tar.gz, or of metrics.json for a folder): a bundle already logged to the experiment
is not logged again unless --force. Examples:

    tokenforge log-bundle results/default/tokenforge-results.tar.gz --tracking-uri http://host:5000
    MLFLOW_TRACKING_URI=http://host:5000 tokenforge log-bundle results/default/package
    tokenforge log-bundle a.tar.gz --tracking-uri sqlite:///$PWD/backfill/mlflow.db --run-name a-seed1
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tokenforge.errors import TokenforgeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", metavar="BUNDLE", help="tokenforge-results.tar.gz, or an unpacked bundle folder")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store to log to (default: $MLFLOW_TRACKING_URI; one of the two is needed)"
    )
    parser.add_argument(
        "--experiment", default=None, help="MLflow experiment (default: the bundle config's mlflow.experiment, else tokenforge)"
    )
    parser.add_argument("--run-name", default=None, help="name of the run (default: the bundle config's `run`)")
    parser.add_argument("--force", action="store_true", help="log the bundle even if a run with its bundle_sha256 exists")


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.tracking.bundle import (
        DEFAULT_EXPERIMENT,
        ensure_experiment,
        log_run,
        logged_run,
        open_bundle,
        read_bundle,
    )
    from tokenforge.tracking.bundle import config_experiment as _config_experiment
    from tokenforge.tracking.bundle import open_store as _open_store

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise TokenforgeError(
            "no MLflow store to log to: pass --tracking-uri URI (e.g. sqlite:///$PWD/results/backfill/mlflow.db) "
            "or set MLFLOW_TRACKING_URI"
        )
    with open_bundle(Path(args.bundle)) as bundle:
        metrics, config = read_bundle(bundle)
        experiment = args.experiment or _config_experiment(config) or DEFAULT_EXPERIMENT
        run_name = args.run_name or str(config.get("run") or "") or bundle.source.name
        client = _open_store(uri)
        experiment_id = ensure_experiment(client, uri, experiment)
        if not args.force:
            existing = logged_run(client, uri, experiment_id, bundle.sha256)
            if existing is not None:
                print(
                    f"{bundle.source}: already logged as run {existing.info.run_id} ({existing.info.run_name}) "
                    f"in experiment {experiment!r} of {uri}; nothing to do (--force logs it again)"
                )
                return
        run_id = log_run(client, uri, experiment_id, bundle, metrics, config, run_name)
    print(f"{bundle.source}: logged as run {run_id} ({run_name}) in experiment {experiment!r} of {uri}")
