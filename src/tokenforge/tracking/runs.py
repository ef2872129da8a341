"""MLflow tracking: one parent run per pipeline run, one child run per job (with an experiment's grid, one run per
variant between them: tracking/variants.py).

The parent run's identity lives in `RESULTS_DIR/mlflow/parent.json`, so every job (also on other
machines) attaches its child run to it. The default store is a SQLite file inside the results
directory (no server needed); `MLFLOW_TRACKING_URI` points elsewhere. Tracking must never cost a
training run: any tracking failure prints one warning and turns the tracker into a no-op.

Two modes (tokenforge.tracking.MODES; parent.json's "mode"): `live` logs every call to the store as it happens
(MlflowTracker); `deferred` appends it to a spool file instead (tracking/spool.py: no MLflow import, which costs a
job about 2 s) that `tokenforge track sync|end` replays into the store (tracking/sync.py). `auto` is deferred for
the default SQLite store in the results folder and live for any other store: people watch a server during a run.
This module chooses between the two; what both share (the client, retries, locks, the warn-once guard) is in
tracking/base.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json, write_json
from tokenforge.tracking import MODES
from tokenforge.tracking import variants as variant_runs
from tokenforge.tracking.base import (
    PARENT_FILE,
    SECRET,
    Guarded,
    dataset_digest,
    dataset_input,
    experiment_id_for,
    failure_line,
    locked,
    mlflow_client,
    param_batches,
    register_torch_model,
    retry_locked,
)
from tokenforge.tracking.spool import SpoolTracker, spool_folder, start_deferred
from tokenforge.tracking.sync import end_deferred

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "tokenforge"
# CLI arguments that are plumbing, not parameters of the experiment.
_NOT_PARAMS = {"func", "track", "tag", "quiet", "command"}


class NullTracker:
    """The do-nothing twin: stages call it unconditionally, so they never branch on tracking."""

    run_id: str | None = None

    def log_params(self, params: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...

    def log_artifact(self, path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict) -> None: ...

    def log_dataset(self, name: str, path, context: str, profile: dict | None = None) -> None: ...

    def register_model(self, model, example, name: str, alias: str = "latest-run") -> None: ...


class MlflowTracker(Guarded):
    """Logs to one MLflow run through a client; the first failure warns once and disables it."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id

    def _call(self, method: str, *args, **kwargs) -> None:
        self._guard(retry_locked, getattr(self.client, method), *args, **kwargs)

    def log_params(self, params: dict) -> None:
        for batch in param_batches(params):
            self._call("log_batch", self.run_id, params=batch)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in sorted(metrics.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        if items:
            self._call("log_batch", self.run_id, metrics=items)

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict) -> None:
        for key, value in tags.items():
            self._call("set_tag", self.run_id, key, str(value))

    def register_model(self, model, example, name: str, alias: str = "latest-run") -> None:
        """Log a torch model with a signature inferred from `example` into this run, register it as a new
        version of `name` in the model registry and point `alias` at that version."""
        if not self.enabled:
            return
        try:
            register_torch_model(self.client, self.run_id, model, example, name, alias)
        except Exception as exc:  # tracking must never kill the job
            self._disable(exc)

    def log_dataset(self, name: str, path, context: str, profile: dict | None = None) -> None:
        """`mlflow.log_input` for a local file or folder: name, content digest, path, size and `profile`."""
        import json

        if not self.enabled:
            return
        path = Path(path).resolve()
        size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        source, profile = json.dumps({"uri": path.as_uri()}), json.dumps({"bytes": size, **(profile or {})})
        self._call("log_inputs", self.run_id, datasets=[dataset_input(name, dataset_digest(path), source, profile, context)])


def tracking_uri_for(results_dir: str | os.PathLike, uri: str | None = None) -> str:
    """The explicit URI, else $MLFLOW_TRACKING_URI, else a SQLite file inside the results directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: nested config as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def base_tags() -> dict[str, str]:
    """Tags every run carries: where and from which code it ran."""
    tags = {"host": socket.gethostname()}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        tags["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        tags["git_commit"] = "unknown"
    if os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    # Under a launcher: how many processes the job ran, and torchrun's run id (the SLURM job id on several nodes)
    if os.environ.get("WORLD_SIZE"):
        tags["world_size"] = os.environ["WORLD_SIZE"]
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        tags["torchelastic_run_id"] = os.environ["TORCHELASTIC_RUN_ID"]
    return tags


def tracking_mode(mode: str = "auto", tracking_uri: str | None = None) -> str:
    """`live` or `deferred`: `auto` defers for the default store (no `tracking_uri`, no $MLFLOW_TRACKING_URI), a
    SQLite file in the results folder that nobody watches during the run, and is live for any other store."""
    if mode not in MODES:
        raise TokenforgeError(f"tracking mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "live" if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") else "deferred"


def start_parent(
    results_dir: str | os.PathLike,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    params: dict | None = None,
    tags: dict | None = None,
    mode: str = "auto",
    config: str | os.PathLike | None = None,
    variants: list[dict] | None = None,
) -> dict:
    """A new parent run (with `params`, tags and the `config` file as artifact), recorded in
    RESULTS_DIR/mlflow/parent.json. Live: created in the store now. Deferred: only described there (and in a new
    spool folder), without importing MLflow; `tokenforge track sync` creates it (tracking/spool.py). With the
    `variants` of an experiment (tracking/variants.py): one child run per variant, its folder's jobs nested under it."""
    results_dir = Path(results_dir)
    uri = tracking_uri_for(results_dir, tracking_uri)
    run_name = run_name or results_dir.name
    if tracking_mode(mode, tracking_uri) == "deferred":
        spec = {"tracking_uri": uri, "experiment": experiment, "run_name": run_name, "tags": {**base_tags(), **(tags or {})}}
        if variants:
            spec["variants"] = variants
        info = start_deferred(results_dir, {**spec, "params": params or {}}, Path(config) if config else None)
        if variants:
            variant_runs.write_parent_files(results_dir, info, variants)
        return info
    client = mlflow_client(uri)
    experiment_id = experiment_id_for(client, experiment, uri, results_dir)
    run = client.create_run(experiment_id, run_name=run_name, tags={**base_tags(), **(tags or {})})
    info = {"mode": "live", "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": run.info.run_id}
    tracker = MlflowTracker(client, run.info.run_id)
    if params:
        tracker.log_params(params)
    if config:
        tracker.log_artifact(config)
    if variants:
        info["variants"] = variant_runs.start_live(client, results_dir, info, variants)
    write_json(results_dir / PARENT_FILE, info)
    return info


def end_parent(results_dir: str | os.PathLike, status: str = "FINISHED") -> None:
    """Log every job's log file to the parent run (under logs/), then close it with `status`, and its variants'
    runs too (tracking/variants.py). Deferred: after replaying the spool, its runs without an end marked KILLED
    (tracking/sync.py)."""
    info = read_json(Path(results_dir) / PARENT_FILE)
    if info.get("mode") == "deferred":
        end_deferred(results_dir, status)
        return
    client = mlflow_client(info["tracking_uri"])
    if info.get("variants"):
        variant_runs.end_live(client, results_dir, info["variants"], status)
    logs = Path(results_dir) / "logs"
    if logs.is_dir():
        client.log_artifacts(info["parent_run_id"], str(logs), "logs")
    client.set_terminated(info["parent_run_id"], status=status)


def parent_info(results_dir: str | os.PathLike) -> dict:
    """The pipeline's parent run; created on first use when no `tokenforge track start` ran."""
    results_dir = Path(results_dir)
    if not (results_dir / PARENT_FILE).exists():
        with locked(results_dir / "mlflow" / ".lock"):
            if not (results_dir / PARENT_FILE).exists():
                return start_parent(results_dir)
    return read_json(results_dir / PARENT_FILE)


def public_params(args) -> dict:
    """The CLI arguments of a job as params: plumbing and anything that looks like a secret dropped."""
    return {
        k: v
        for k, v in vars(args).items()
        if k not in _NOT_PARAMS and v is not None and not SECRET.search(k)
    }


def _open_child(results_dir, rule: str, tags: dict):
    """The tracker of a new child run: live (MlflowTracker) or deferred (SpoolTracker), as parent.json says."""
    try:
        info = parent_info(results_dir)
        name = "-".join([rule] + [f"{v}" for k, v in sorted(tags.items()) if k in ("task", "split")])
        variant = {"variant": info["variant"]} if info.get("variant") else {}  # a job of an experiment's variant
        if info.get("mode") == "deferred":
            folder = spool_folder(results_dir, info)
            return SpoolTracker(folder, name, rule, {**base_tags(), **variant, **tags}, info.get("variant"))
        client = mlflow_client(info["tracking_uri"])
        run = retry_locked(
            client.create_run,
            info["experiment_id"],
            run_name=name,
            tags={"mlflow.parentRunId": info["parent_run_id"], "rule": rule, **base_tags(), **variant, **tags},
        )
        return MlflowTracker(client, run.info.run_id)
    except Exception as exc:
        log.warning("MLflow tracking unavailable, the job goes on without it: %s", failure_line(exc))
        return NullTracker()


@contextlib.contextmanager
def child_run(results_dir, rule: str, tags: dict, args) -> Iterator[Any]:
    """A child run of the pipeline's parent for one job (MlflowTracker, or SpoolTracker in deferred mode); a
    NullTracker when `results_dir` is None. Its status: FINISHED, or FAILED when the job raised."""
    if results_dir is None:
        yield NullTracker()
        return
    tracker = _open_child(results_dir, rule, tags)
    tracker.log_params(public_params(args))
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        if isinstance(tracker, MlflowTracker):
            tracker._call("set_terminated", tracker.run_id, status=status)
        elif hasattr(tracker, "end"):
            tracker.end(status)
