"""Deferred ("spooled") tracking: the write side. Nothing here imports MLflow.

`tokenforge track start --mode deferred` writes the parent run's description (store, experiment, run name, config
params and artifact) into RESULTS_DIR/mlflow/parent.json and into a new spool folder
RESULTS_DIR/mlflow/spool/<key>/ (its parent.json; <key> sorts by start time, so every invocation has its own).
Each job appends one JSON line per tracking call to its own file in that folder,
`<ms since epoch>-<run name>-<host>-<pid>-<random>.jsonl`, and keeps copies of what it logs (artifacts, the
registered model) in the folder `<same name>.files/`. Every line is {"op", "t": wall-clock ms, ...}:

  start {run_name, rule, tags[, variant]}   params {params}   metrics {step, metrics}   tags {tags}   artifact {file, artifact_path}
  dataset {name, digest, source, profile, context}   model {model, example, name, alias}   end {status}

A job killed before its end leaves no `end` line. `tokenforge track sync` (tracking/sync.py) replays the lines.
A job of an experiment's variant (tracking/variants.py) spools into the experiment's folder, its start naming the
variant whose run is its parent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

from tokenforge.io import write_json
from tokenforge.tracking.base import PARENT_FILE, SECRET, Guarded, dataset_digest, failure_line, locked, param_value

log = logging.getLogger(__name__)

SPOOL = Path("mlflow") / "spool"
STATE = "sync.json"  # per spool folder: how far `sync` got (tracking/sync.py)


def now_ms() -> int:
    return int(time.time() * 1000)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:80]


def start_deferred(results_dir: Path, spec: dict, config: Path | None = None) -> dict:
    """A new spool folder described by `spec` (tracking_uri, experiment, run_name, params, tags[, variants]): its parent.json,
    the config copied beside it, and RESULTS_DIR/mlflow/parent.json pointing at it. An earlier invocation's
    folder that was never ended (Snakemake killed before its onerror hook) is marked to end KILLED on its sync."""
    results_dir = Path(results_dir)
    key = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
    folder = results_dir / SPOOL / key
    folder.mkdir(parents=True)
    info = {"mode": "deferred", "spool": key, "start_time": now_ms(), "artifacts": [], **spec}
    if config is not None:
        (folder / "parent").mkdir()
        shutil.copyfile(config, folder / "parent" / Path(config).name)
        info["artifacts"].append(f"parent/{Path(config).name}")
    write_json(folder / "parent.json", info)
    _end_earlier(results_dir, key)
    if "variants" in info:  # their params and tags are for the sync: the jobs only need where they are
        write_json(results_dir / PARENT_FILE, {**info, "variants": [{"name": v["name"], "dir": v["dir"]} for v in info["variants"]]})
    else:
        write_json(results_dir / PARENT_FILE, info)
    return info


def spool_folder(results_dir: str | os.PathLike, info: dict) -> Path:
    """The spool folder a job tracked with `--track RESULTS_DIR` appends to: RESULTS_DIR's own, or for a variant's
    folder the experiment's (parent.json's experiment_dir, relative to RESULTS_DIR)."""
    return Path(results_dir) / info.get("experiment_dir", ".") / SPOOL / info["spool"]


def _end_earlier(results_dir: Path, key: str) -> None:
    from tokenforge.io import read_json

    root = results_dir / SPOOL
    with locked(root / ".lock"):
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != key):
            state = read_json(folder / STATE) if (folder / STATE).is_file() else {}
            if not state.get("end") and not state.get("ended"):
                state["end"] = {"status": "KILLED", "time": now_ms(), "logs": False}
                write_json(folder / STATE, state)


class SpoolTracker(Guarded):
    """MlflowTracker's interface; every call is one JSON line in this job's spool file (see the module docstring).
    The first failure (an unwritable folder, a missing artifact) warns once and disables it, as MlflowTracker."""

    run_id: str | None = None  # known after `tokenforge track sync` (tracking.sync.run_id_of)

    def __init__(self, folder: Path, run_name: str, rule: str, tags: dict, variant: str | None = None):
        host = _safe(socket.gethostname().split(".")[0])
        stem = f"{now_ms():013d}-{_safe(run_name)}-{host}-{os.getpid()}-{secrets.token_hex(3)}"
        self.path = Path(folder) / f"{stem}.jsonl"
        self.files = Path(folder) / f"{stem}.files"
        self._count = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)  # a name nobody else has
        self._handle = os.fdopen(fd, "a", encoding="utf-8")
        nested = {"variant": variant} if variant else {}  # the sync makes the run a child of the variant's run
        self._write("start", run_name=run_name, rule=rule, tags={k: str(v) for k, v in tags.items()}, **nested)

    def _write(self, op: str, **fields) -> None:
        line = json.dumps({"op": op, "t": now_ms(), **fields}, separators=(",", ":"), default=str)
        self._handle.write(line + "\n")  # one whole line per write, flushed: a reader sees complete lines
        self._handle.flush()

    def _call(self, op: str, **fields) -> None:
        self._guard(self._write, op, **fields)

    def _keep(self, path: Path) -> str:
        """A copy of `path` in this job's files folder, as it is now; its name relative to the spool folder."""
        self._count += 1
        target = self.files / str(self._count) / path.name
        target.parent.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copyfile(path, target)
        return str(target.relative_to(self.path.parent))

    def log_params(self, params: dict) -> None:
        params = {k: param_value(v) for k, v in sorted(params.items()) if not SECRET.search(k)}
        if params:
            self._call("params", params=params)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        items = {k: float(v) for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if items:
            self._call("metrics", step=step or 0, metrics=items)

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        try:
            self._write("artifact", file=self._keep(Path(path)), artifact_path=artifact_path)
        except Exception as exc:
            self._disable(exc)

    def set_tags(self, tags: dict) -> None:
        if tags:
            self._call("tags", tags={k: str(v) for k, v in tags.items()})

    def log_dataset(self, name: str, path, context: str, profile: dict | None = None) -> None:
        """What MlflowTracker.log_dataset logs, with the digest and size taken now (a rerun may change the data)."""
        if not self.enabled:
            return
        try:
            path = Path(path).resolve()
            size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            self._write("dataset", name=name, digest=dataset_digest(path), source=json.dumps({"uri": path.as_uri()}),
                        profile=json.dumps({"bytes": size, **(profile or {})}), context=context)  # fmt: skip
        except Exception as exc:
            self._disable(exc)

    def register_model(self, model, example, name: str, alias: str = "latest-run") -> None:
        """The model and its example input saved (torch.save) into the files folder; the sync registers them."""
        if not self.enabled:
            return
        try:
            import torch

            self._count += 1
            folder = self.files / str(self._count)
            folder.mkdir(parents=True)
            torch.save(model, folder / "model.pt")
            torch.save(example, folder / "example.pt")
            rel = folder.relative_to(self.path.parent)
            self._write("model", model=str(rel / "model.pt"), example=str(rel / "example.pt"), name=name, alias=alias)
        except Exception as exc:
            self._disable(exc)

    def end(self, status: str) -> None:
        """The run's status (FINISHED, FAILED), written even after a failure disabled the other calls."""
        try:
            self._write("end", status=status)
            self._handle.close()
        except Exception as exc:
            log.warning("MLflow tracking could not record the end of this job: %s", failure_line(exc))
