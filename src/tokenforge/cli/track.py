"""Start, sync or end the pipeline's parent MLflow run (Snakemake's onstart/onsuccess/onerror call this).

  tokenforge track start RESULTS_DIR --experiment NAME --config config.yaml [--mode auto|live|deferred]
                                     [--variants RESULTS_DIR/experiment.json]
  tokenforge track sync RESULTS_DIR      # write what the jobs spooled so far into the store
  tokenforge track end RESULTS_DIR --status FINISHED

Every job run with `--track RESULTS_DIR` is a child run of the parent kept in RESULTS_DIR/mlflow/parent.json.
An experiment's grid (--variants: its experiment.json) adds one child run of the parent per variant (named after
it; params: the variant's grid params, and its RESULTS_DIR/<dir>/config.resolved.yaml flattened when there; tags
variant, variant_group, grid.<key>); a job run with `--track RESULTS_DIR/<dir>` is a child of its variant's run, in
the same store. `sync` and `end` of RESULTS_DIR cover the variants: `end` ends them with the parent's status, each
with the headline metrics of its RESULTS_DIR/<dir>/package/metrics.json.
How a job logs is the mode `start` chose (config key mlflow.mode):

  live      each job opens the store and logs as it goes (importing MLflow costs a job about 2 s);
  deferred  each job appends its params, metrics, tags, datasets and copies of its artifacts to its own spool file
            under RESULTS_DIR/mlflow/spool/ without importing MLflow; `sync` replays them into the store (start and
            end times, steps and statuses as they were) and `end` syncs before it ends the parent run, so the
            store is complete when the pipeline is done. To follow a long local run in `mlflow ui`, call
            `tokenforge track sync RESULTS_DIR` whenever you like: it is incremental and never logs anything twice.
            Runs still going show as RUNNING; jobs killed before their end are marked KILLED by `end`;
  auto      (default) deferred for the default SQLite store in RESULTS_DIR (no --tracking-uri, no
            $MLFLOW_TRACKING_URI), live for any other store: a server is watched during the run.

Tracking never stops the pipeline: `start` and `end` warn in one line and exit 0 when the store fails (`end`
keeps the spool, so `sync` can retry); `sync`, called by hand, exits non-zero with a one-line error.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tokenforge.tracking import MODES

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=["start", "sync", "end"], help="start a new parent run, replay the spool of a deferred one, or end it"
    )
    parser.add_argument("results_dir", type=Path, help="the pipeline's results directory")
    parser.add_argument("--experiment", default="tokenforge", help="MLflow experiment name")
    parser.add_argument("--config", type=Path, default=None, help="resolved config YAML, logged as params and artifact")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a SQLite file in RESULTS_DIR)"
    )
    parser.add_argument("--run-name", default=None, help="name of the parent run (default: the results folder name)")
    parser.add_argument("--status", default="FINISHED", choices=["FINISHED", "FAILED", "KILLED"], help="final status for `end`")
    parser.add_argument(
        "--mode", default="auto", choices=MODES, help="for `start`: how jobs log (live, deferred, or auto: deferred for the default store)"
    )
    parser.add_argument(
        "--variants", type=Path, default=None, metavar="EXPERIMENT_JSON",
        help="for `start`: the experiment.json of a grid; one child run per variant, the parent of the jobs in its folder",
    )  # fmt: skip


def run(args, tracker) -> None:
    from tokenforge.tracking.base import failure_line as _one_line

    if args.action == "sync":
        _sync(args.results_dir)
        return
    try:
        if args.action == "end":
            _end(args.results_dir, args.status)
        else:
            _start(args)
    except Exception as exc:  # tracking never stops the pipeline
        log.warning("MLflow tracking unavailable: %s", _one_line(exc) if str(exc) else type(exc).__name__)


def _start(args) -> None:
    import yaml

    from tokenforge.tracking.runs import flatten, start_parent
    from tokenforge.tracking.variants import CONFIG_FILE, read_variants

    config = yaml.safe_load(args.config.read_text()) if args.config else {}
    variants = read_variants(args.variants) if args.variants else []
    for variant in variants:  # its resolved config, when written, then its grid params
        path = args.results_dir / variant["dir"] / CONFIG_FILE
        if path.is_file():
            variant["params"] = {**flatten(yaml.safe_load(path.read_text()) or {}), **variant["params"]}
    info = start_parent(
        args.results_dir,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        run_name=args.run_name,
        params=flatten(config or {}),
        mode=args.mode,
        config=args.config,
        variants=variants,
    )
    with_variants = f" with {len(variants)} variant runs" if variants else ""
    if info["mode"] == "deferred":
        sync = f"`tokenforge track sync {args.results_dir}`"
        print(f"MLflow tracking deferred{with_variants}: {sync} writes the runs to {info['tracking_uri']}")
    else:
        print(f"MLflow parent run {info['parent_run_id']}{with_variants} in {info['tracking_uri']}")


def _end(results_dir: Path, status: str) -> None:
    """Sync (deferred) and end the parent; a failed sync is one warning naming the spool, which is kept."""
    from tokenforge.tracking.base import failure_line as _one_line
    from tokenforge.tracking.runs import end_parent
    from tokenforge.tracking.spool import SPOOL

    try:
        end_parent(results_dir, status)
    except Exception as exc:
        if not (results_dir / SPOOL).is_dir():
            raise
        log.warning(
            "MLflow sync failed, the spool in %s is kept (retry: tokenforge track sync %s): %s",
            results_dir / SPOOL, results_dir, _one_line(exc),
        )  # fmt: skip


def _sync(results_dir: Path) -> None:
    """Replay the spool (a variant's folder: its experiment's); any failure is a one-line TokenforgeError (exit status 2)."""
    from tokenforge.errors import TokenforgeError
    from tokenforge.io import read_json
    from tokenforge.tracking.base import PARENT_FILE
    from tokenforge.tracking.base import failure_line as _one_line
    from tokenforge.tracking.sync import sync

    if not (results_dir / PARENT_FILE).is_file():
        raise TokenforgeError(f"{results_dir}: not tracked (no {PARENT_FILE}; `tokenforge track start` writes it)")
    results_dir = results_dir / read_json(results_dir / PARENT_FILE).get("experiment_dir", ".")  # a variant's: E's spool
    try:
        replayed = sync(results_dir)
    except TokenforgeError:
        raise
    except Exception as exc:
        raise TokenforgeError(f"{results_dir}: sync failed, the spool is kept ({_one_line(exc)})") from None
    info = read_json(results_dir / PARENT_FILE)
    where = f"parent run {info['parent_run_id']} in " if info.get("parent_run_id") else ""
    print(f"MLflow: {replayed} spooled calls replayed into {where}{info['tracking_uri']}")
