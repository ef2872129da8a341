"""What the tracking modules share, below the dispatch between live and deferred tracking (tracking/runs.py): the
parent file's place, the MLflow client and its retries on a shared SQLite store, the file lock, a tracker's warn-once
guard, how params and datasets become MLflow entities, registering a torch model, and an error on one line.

Live tracking (runs.py), the spool (spool.py), its replay (sync.py) and the tools (compare.py, bundle.py) import
from here and never from one another's internals, so none of them needs the module that chooses between them.
Nothing here imports MLflow at import time: the spool writes without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from tokenforge.errors import TokenforgeError, one_line

# Guarded warns under the name of the module it came from, runs.py: log lines show it (%(name)s), filters may use it.
log = logging.getLogger("tokenforge.tracking.runs")

PARENT_FILE = Path("mlflow") / "parent.json"
# Parameter names that look like credentials are never logged.
SECRET = re.compile(r"secret|password|passwd|api[_-]?key|credential|auth|private[_-]?key", re.I)
# MLflow's HTTP client retries 7 times with exponential backoff (minutes) before giving up on a server that
# is down; a job must not stall that long on tracking. Users' own settings win.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def failure_line(exc: BaseException) -> str:
    """A tracking failure on one line: an unreachable server named as such (MLflow's own message is a page of
    urllib3 retries), else the exception's type and the first line of its message, at most 300 characters."""
    text = str(exc).strip()
    unreachable = re.search(r"API request to (\S+?)/api/\S* failed with exception .*?(Max retries exceeded|Connection refused|timed out)", text)
    if unreachable:
        return f"the tracking server {unreachable.group(1)} is unreachable ({unreachable.group(2).lower()})"
    return f"{type(exc).__name__}: {one_line(exc, lines=1) if text else ''}"[:300]


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
        log.warning("MLflow tracking disabled for this job after an error: %s", failure_line(exc))


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


def param_value(value: Any) -> str:
    """A param's value as MLflow stores it: lists comma-joined, at most 500 characters."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return str(value)[:500]


def param_batches(params: dict) -> list:
    """MLflow Params of `params` (secret-looking names dropped) in batches of 100, the most log_batch accepts."""
    from mlflow.entities import Param

    items = [Param(k, param_value(v)) for k, v in sorted(params.items()) if not SECRET.search(k)]
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
    retry_locked(client.set_registered_model_alias, name, alias, info.registered_model_version)


def _transient(exc: Exception) -> bool:
    """Errors of parallel jobs sharing one SQLite store that a retry clears: the file momentarily locked, or two
    jobs inserting the same dataset row at once (log_inputs; the retry finds the row and links it to the run)."""
    text = str(exc).lower()
    return "locked" in text or "unique constraint failed: datasets." in text


def retry_locked(fn, *args, **kwargs):
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
        return retry_locked(fn, *args, **kwargs)
    except TokenforgeError:
        raise
    except Exception as exc:
        raise TokenforgeError(f"{uri}: cannot {what} ({failure_line(exc)})") from None


def mlflow_client(uri: str):
    """An MlflowClient of the store at `uri`, with HTTP retries short enough for a job (see _HTTP_DEFAULTS)."""
    from mlflow import MlflowClient

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # one warning of ours, not one per retry
    return MlflowClient(tracking_uri=uri)


def experiment_id_for(client, experiment: str, uri: str, results_dir: Path) -> str:
    """The id of `experiment` in the store, created if new (with a SQLite store: artifacts in RESULTS_DIR/mlartifacts)."""
    exp = retry_locked(client.get_experiment_by_name, experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):  # keep artifacts beside the SQLite store, not in ./mlruns
        location = (Path(results_dir).resolve() / "mlartifacts").as_uri()
    return retry_locked(client.create_experiment, experiment, artifact_location=location)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file `path` (created, with its folder) while the block runs: one process at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
