"""MLflow tracking: one parent run per pipeline run, one child run per job.

The parent run's identity lives in `RESULTS_DIR/mlflow/parent.json`, so every job (also on other
machines) attaches its child run to it. The default store is a SQLite file inside the results
directory (no server needed); `MLFLOW_TRACKING_URI` points elsewhere. Tracking must never cost a
training run: any tracking failure prints one warning and turns the tracker into a no-op.

Two modes (tokenforge.tracking.MODES; parent.json's "mode"): `live` logs every call to the store as it happens
(MlflowTracker); `deferred` appends it to a spool file instead (tracking/spool.py: no MLflow import, which costs a
job about 2 s) that `tokenforge track sync|end` replays into the store (tracking/sync.py). `auto` is deferred for
the default SQLite store in the results folder and live for any other store: people watch a server during a run.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json, write_json
from tokenforge.tracking import MODES

log = logging.getLogger(__name__)

PARENT_FILE = Path("mlflow") / "parent.json"
DEFAULT_EXPERIMENT = "tokenforge"
# Parameter names that look like credentials are never logged.
_SECRET = re.compile(r"secret|password|passwd|api[_-]?key|credential|auth|private[_-]?key", re.I)
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


def dataset_digest(path) -> str:
    """A content digest of a data file or folder. Folders (shards) hash their file names and sizes plus the
    bytes of small files (index, stats): a digest must not cost a pass over gigabytes of tar shards."""
    import hashlib

    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if f != path else f.name}:{size}\n".encode())
        if f == path or size <= 1 << 20:
            with open(f, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


class Guarded:
    """A tracker whose first failure warns once and turns it into a no-op: tracking must never kill the job."""

    enabled = True

    def _guard(self, fn, *args, **kwargs) -> None:
        if not self.enabled:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # tracking must never kill the job
            self._disable(exc)

    def _disable(self, exc: Exception) -> None:
        self.enabled = False
        log.warning("MLflow tracking disabled for this job after an error: %s", _one_line(exc))


class MlflowTracker(Guarded):
    """Logs to one MLflow run through a client; the first failure warns once and disables it."""

    def __init__(self, client, run_id: str):
        self.client = client
        self.run_id = run_id

    def _call(self, method: str, *args, **kwargs) -> None:
        self._guard(_retry_locked, getattr(self.client, method), *args, **kwargs)

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


def param_batches(params: dict) -> list:
    """MLflow Params of `params` (secret-looking names dropped) in batches of 100, the most log_batch accepts."""
    from mlflow.entities import Param

    items = [Param(k, _param_value(v)) for k, v in sorted(params.items()) if not _SECRET.search(k)]
    return [items[start : start + 100] for start in range(0, len(items), 100)]


def dataset_input(name: str, digest: str, source: str, profile: str, context: str):
    """The DatasetInput of a local file or folder (source: a JSON {"uri"}; profile: JSON) used as `context`."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest, source_type="local", source=source, profile=profile)
    return DatasetInput(dataset, [InputTag("mlflow.data.context", context)])


def register_torch_model(client, run_id: str, model, example, name: str, alias: str) -> None:
    """Log a torch model with a signature inferred from `example` into run `run_id`, register it as a new version
    of `name` and point `alias` at that version (MlflowTracker.register_model, and the sync of a deferred one)."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        signature = infer_signature(example.numpy(), model(example).numpy())
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model, name="model", signature=signature, registered_model_name=name, input_example=example.numpy(),
            serialization_format="pickle",  # MLflow's pt2 export fixed the batch size to the example's (1)
            pip_requirements=["tokenforge", "torch", "timm"],  # inferring them would import and time every module
        )
    _retry_locked(client.set_registered_model_alias, name, alias, info.registered_model_version)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    unreachable = re.search(r"API request to (\S+?)/api/\S* failed with exception .*?(Max retries exceeded|Connection refused|timed out)", text)
    if unreachable:
        return f"the tracking server {unreachable.group(1)} is unreachable ({unreachable.group(2).lower()})"
    lines = text.splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return str(value)[:500]


def _transient(exc: Exception) -> bool:
    """Errors of parallel jobs sharing one SQLite store that a retry clears: the file momentarily locked, or two
    jobs inserting the same dataset row at once (log_inputs; the retry finds the row and links it to the run)."""
    text = str(exc).lower()
    return "locked" in text or "unique constraint failed: datasets." in text


def _retry_locked(fn, *args, **kwargs):
    """Retry briefly on a transient error of a shared SQLite store (see _transient)."""
    for attempt in range(8):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _transient(exc) or attempt == 7:
                raise
            time.sleep(0.25 * 2**attempt)


def store_call(uri: str, what: str, fn, *args, **kwargs):
    """One MLflow call of a tool that reads or fills a store (`compare`, `log-bundle`), retried like a job's.

    Unlike a job's tracking, a failure stops the tool: it is a one-line TokenforgeError naming the store and
    `what` could not be done.
    """
    try:
        return _retry_locked(fn, *args, **kwargs)
    except TokenforgeError:
        raise
    except Exception as exc:
        raise TokenforgeError(f"{uri}: cannot {what} ({_one_line(exc)})") from None


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


# MLflow's HTTP client retries 7 times with exponential backoff (minutes) before giving up on a server that
# is down; a job must not stall that long on tracking. Users' own settings win.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def _client(uri: str):
    from mlflow import MlflowClient

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # one warning of ours, not one per retry
    return MlflowClient(tracking_uri=uri)


def tracking_mode(mode: str = "auto", tracking_uri: str | None = None) -> str:
    """`live` or `deferred`: `auto` defers for the default store (no `tracking_uri`, no $MLFLOW_TRACKING_URI), a
    SQLite file in the results folder that nobody watches during the run, and is live for any other store."""
    if mode not in MODES:
        raise TokenforgeError(f"tracking mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "live" if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") else "deferred"


def experiment_id_for(client, experiment: str, uri: str, results_dir: Path) -> str:
    """The id of `experiment` in the store, created if new (with a SQLite store: artifacts in RESULTS_DIR/mlartifacts)."""
    exp = _retry_locked(client.get_experiment_by_name, experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):  # keep artifacts beside the SQLite store, not in ./mlruns
        location = (Path(results_dir).resolve() / "mlartifacts").as_uri()
    return _retry_locked(client.create_experiment, experiment, artifact_location=location)


def start_parent(
    results_dir: str | os.PathLike,
    experiment: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    run_name: str | None = None,
    params: dict | None = None,
    tags: dict | None = None,
    mode: str = "auto",
    config: str | os.PathLike | None = None,
) -> dict:
    """A new parent run (with `params`, tags and the `config` file as artifact), recorded in
    RESULTS_DIR/mlflow/parent.json. Live: created in the store now. Deferred: only described there (and in a new
    spool folder), without importing MLflow; `tokenforge track sync` creates it (tracking/spool.py)."""
    results_dir = Path(results_dir)
    uri = tracking_uri_for(results_dir, tracking_uri)
    run_name = run_name or results_dir.name
    if tracking_mode(mode, tracking_uri) == "deferred":
        from tokenforge.tracking.spool import start_deferred

        spec = {"tracking_uri": uri, "experiment": experiment, "run_name": run_name, "tags": {**base_tags(), **(tags or {})}}
        return start_deferred(results_dir, {**spec, "params": params or {}}, Path(config) if config else None)
    client = _client(uri)
    experiment_id = experiment_id_for(client, experiment, uri, results_dir)
    run = client.create_run(experiment_id, run_name=run_name, tags={**base_tags(), **(tags or {})})
    info = {"mode": "live", "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": run.info.run_id}
    tracker = MlflowTracker(client, run.info.run_id)
    if params:
        tracker.log_params(params)
    if config:
        tracker.log_artifact(config)
    write_json(results_dir / PARENT_FILE, info)
    return info


def end_parent(results_dir: str | os.PathLike, status: str = "FINISHED") -> None:
    """Log every job's log file to the parent run (under logs/), then close it with `status`. Deferred: after
    replaying the spool, its runs without an end marked KILLED (tracking/sync.py)."""
    info = read_json(Path(results_dir) / PARENT_FILE)
    if info.get("mode") == "deferred":
        from tokenforge.tracking.sync import end_deferred

        end_deferred(results_dir, status)
        return
    client = _client(info["tracking_uri"])
    logs = Path(results_dir) / "logs"
    if logs.is_dir():
        client.log_artifacts(info["parent_run_id"], str(logs), "logs")
    client.set_terminated(info["parent_run_id"], status=status)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parent_info(results_dir: str | os.PathLike) -> dict:
    """The pipeline's parent run; created on first use when no `tokenforge track start` ran."""
    results_dir = Path(results_dir)
    if not (results_dir / PARENT_FILE).exists():
        with _locked(results_dir / "mlflow" / ".lock"):
            if not (results_dir / PARENT_FILE).exists():
                return start_parent(results_dir)
    return read_json(results_dir / PARENT_FILE)


def public_params(args) -> dict:
    """The CLI arguments of a job as params: plumbing and anything that looks like a secret dropped."""
    return {
        k: v
        for k, v in vars(args).items()
        if k not in _NOT_PARAMS and v is not None and not _SECRET.search(k)
    }


def _open_child(results_dir, rule: str, tags: dict):
    """The tracker of a new child run: live (MlflowTracker) or deferred (SpoolTracker), as parent.json says."""
    try:
        info = parent_info(results_dir)
        name = "-".join([rule] + [f"{v}" for k, v in sorted(tags.items()) if k in ("task", "split")])
        if info.get("mode") == "deferred":
            from tokenforge.tracking.spool import SPOOL, SpoolTracker

            return SpoolTracker(Path(results_dir) / SPOOL / info["spool"], name, rule, {**base_tags(), **tags})
        client = _client(info["tracking_uri"])
        run = _retry_locked(
            client.create_run,
            info["experiment_id"],
            run_name=name,
            tags={"mlflow.parentRunId": info["parent_run_id"], "rule": rule, **base_tags(), **tags},
        )
        return MlflowTracker(client, run.info.run_id)
    except Exception as exc:
        log.warning("MLflow tracking unavailable, the job goes on without it: %s", _one_line(exc))
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
