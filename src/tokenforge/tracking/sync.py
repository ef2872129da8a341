"""Deferred tracking: the replay. `tokenforge track sync RESULTS_DIR` writes what jobs spooled (tracking/spool.py)
into the store through MLflow's client, `tokenforge track end` syncs and then ends the parent run.

Incremental and idempotent: each spool folder's sync.json remembers the parent's run id and, per spool file, its
run id, how many bytes of it are replayed and whether its run ended; it is saved after every replayed call, under
a file lock, so a sync can run while jobs still write and a second one logs nothing twice. Only whole lines are
replayed (a job may be writing the next one). A spool file without an `end` line keeps its run RUNNING, until the
parent ends: then it is KILLED. A failure stops the sync with the spool and what was done kept: the next resumes.
An experiment's variants (tracking/variants.py), described in the folder's parent.json, are created with the parent;
their jobs' runs nest under them, and they end with the parent, with the headline metrics `end` found.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenforge.io import read_json, write_json
from tokenforge.tracking import variants as variant_runs
from tokenforge.tracking.base import (
    PARENT_FILE,
    dataset_input,
    experiment_id_for,
    locked,
    mlflow_client,
    param_batches,
    register_torch_model,
    retry_locked,
)
from tokenforge.tracking.spool import SPOOL, STATE, now_ms

BATCH = 1000  # the most metrics one log_batch call takes


def run_id_of(spool_file: str | os.PathLike) -> str | None:
    """The MLflow run id a spool file was replayed into (None before its first sync)."""
    spool_file = Path(spool_file)
    state_file = spool_file.parent / STATE
    state = read_json(state_file) if state_file.is_file() else {}
    return state.get("files", {}).get(spool_file.name, {}).get("run_id")


def sync(results_dir: str | os.PathLike) -> int:
    """Replay every spool folder of RESULTS_DIR into its store; the number of spooled calls replayed."""
    root = Path(results_dir) / SPOOL
    if not root.is_dir():
        return 0
    with locked(root / ".lock"):
        return sum(_sync_folder(Path(results_dir), folder) for folder in sorted(p for p in root.iterdir() if p.is_dir()))


def end_deferred(results_dir: str | os.PathLike, status: str = "FINISHED") -> int:
    """`tokenforge track end` of a deferred parent: record the end (status, now, with logs/) in its spool folder,
    then sync, which replays what is left, marks runs without an end KILLED and ends the parent."""
    results_dir = Path(results_dir)
    info = read_json(results_dir / PARENT_FILE)
    folder = results_dir / SPOOL / info["spool"]
    with locked(folder.parent / ".lock"):
        state = _state(folder)
        if not state.get("ended"):
            state["end"] = {"status": status, "time": now_ms(), "logs": True}
            if info.get("variants"):  # their headline metrics as they are now
                state["end"]["metrics"] = variant_runs.headlines(results_dir, info["variants"])
            write_json(folder / STATE, state)
    return sync(results_dir)


def _state(folder: Path) -> dict:
    state = read_json(folder / STATE) if (folder / STATE).is_file() else {}
    state.setdefault("files", {})
    return state


def _pending(folder: Path, state: dict) -> list[Path]:
    """Spool files with bytes not yet replayed."""
    return [f for f in sorted(folder.glob("*.jsonl")) if f.stat().st_size > state["files"].get(f.name, {}).get("offset", 0)]


class _Folder:
    """One spool folder being synced: its parent's description, its state, and the store's client."""

    def __init__(self, results_dir: Path, folder: Path, state: dict):
        self.results_dir, self.folder, self.state = results_dir, folder, state
        self.spec = read_json(folder / "parent.json")
        self.client = mlflow_client(self.spec["tracking_uri"])

    def save(self) -> None:
        write_json(self.folder / STATE, self.state)

    def call(self, method: str, *args, **kwargs):
        return retry_locked(getattr(self.client, method), *args, **kwargs)


def _sync_folder(results_dir: Path, folder: Path) -> int:
    if not (folder / "parent.json").is_file():
        return 0
    state = _state(folder)
    pending = _pending(folder, state)
    if not pending and (state.get("ended") or state.get("parent_logged") and not state.get("end")):
        return 0  # nothing to do: no MLflow import, no store opened
    ctx = _Folder(results_dir, folder, state)
    _ensure_parent(ctx)
    replayed = sum(_replay(ctx, path) for path in pending)
    if state.get("end") and not state.get("ended"):
        _finish(ctx)
    return replayed


def _ensure_parent(ctx: _Folder) -> None:
    """The parent run, created (with the time `track start` ran) on the first sync; its id into parent.json."""
    spec, state = ctx.spec, ctx.state
    if not state.get("parent_run_id"):
        experiment_id = experiment_id_for(ctx.client, spec["experiment"], spec["tracking_uri"], ctx.results_dir)
        run = ctx.call("create_run", experiment_id, start_time=spec["start_time"], run_name=spec["run_name"], tags=spec["tags"])
        state.update(experiment_id=experiment_id, parent_run_id=run.info.run_id)
        ctx.save()
        current = ctx.results_dir / PARENT_FILE
        info = read_json(current) if current.is_file() else {}
        if info.get("spool") == ctx.folder.name:  # what `tokenforge summary` prints
            write_json(current, {**info, "experiment_id": experiment_id, "parent_run_id": run.info.run_id})
    if not state.get("parent_logged"):
        for batch in param_batches(spec.get("params") or {}):
            ctx.call("log_batch", state["parent_run_id"], params=batch)
        for name in spec.get("artifacts", []):
            ctx.call("log_artifact", state["parent_run_id"], str(ctx.folder / name))
        if spec.get("variants"):
            _ensure_variants(ctx)
        state["parent_logged"] = True
        ctx.save()


def _ensure_variants(ctx: _Folder) -> None:
    """The variants' runs under the parent (with the time `track start` ran), each id saved once it exists."""
    state = ctx.state
    ids = state.setdefault("variants", {})
    for variant in ctx.spec["variants"]:
        if variant["name"] not in ids:
            ids[variant["name"]] = variant_runs.create_run(
                ctx.call, state["experiment_id"], state["parent_run_id"], variant, start_time=ctx.spec["start_time"]
            )
            ctx.save()
    variant_runs.note_synced(ctx.results_dir, ctx.folder.name, ids, state["experiment_id"], state["parent_run_id"])


def _replay(ctx: _Folder, path: Path) -> int:
    """Replay the whole lines of one spool file from where the last sync stopped; consecutive metrics go in one
    log_batch call. The offset is saved after each call to the store."""
    entry = ctx.state["files"].setdefault(path.name, {"offset": 0})
    with open(path, "rb") as handle:
        handle.seek(entry["offset"])
        data = handle.read()
    lines = data[: data.rfind(b"\n") + 1].splitlines(keepends=True)
    metrics, offset = [], entry["offset"]

    def flush() -> None:
        for start in range(0, len(metrics), BATCH):
            ctx.call("log_batch", entry["run_id"], metrics=metrics[start : start + BATCH])
        metrics.clear()
        entry["offset"] = offset
        ctx.save()

    for line in lines:
        record = json.loads(line)
        if record["op"] == "metrics" and entry.get("run_id"):
            from mlflow.entities import Metric

            metrics.extend(Metric(k, v, record["t"], record["step"]) for k, v in record["metrics"].items())
            offset += len(line)
            if len(metrics) >= BATCH:
                flush()
            continue
        if metrics:
            flush()
        _apply(ctx, path, entry, record)
        offset += len(line)
        entry["offset"] = offset
        ctx.save()
    if metrics or entry["offset"] != offset:
        flush()
    return len(lines)


def _apply(ctx: _Folder, path: Path, entry: dict, record: dict) -> None:
    """One spooled call (other than metrics) into the store."""
    op, run_id = record["op"], entry.get("run_id")
    if op == "start":
        parent = ctx.state.get("variants", {}).get(record.get("variant"), ctx.state["parent_run_id"])
        tags = {"mlflow.parentRunId": parent, "rule": record["rule"], **record["tags"]}
        run = ctx.call("create_run", ctx.state["experiment_id"], start_time=record["t"], run_name=record["run_name"], tags=tags)
        entry["run_id"] = run.info.run_id
        return
    if run_id is None:
        raise ValueError(f"{path}: a {op!r} record before the run's start")
    if op == "params":
        for batch in param_batches(record["params"]):
            ctx.call("log_batch", run_id, params=batch)
    elif op == "tags":
        from mlflow.entities import RunTag

        ctx.call("log_batch", run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()])
    elif op == "artifact":
        _artifact(ctx, run_id, ctx.folder / record["file"], record.get("artifact_path"))
    elif op == "dataset":
        fields = [record[k] for k in ("name", "digest", "source", "profile", "context")]
        ctx.call("log_inputs", run_id, datasets=[dataset_input(*fields)])
    elif op == "model":
        _model(ctx, run_id, record, ended=entry.get("ended", False))
    elif op == "end":
        ctx.call("set_terminated", run_id, status=record["status"], end_time=record["t"])
        entry["ended"] = True
    else:
        raise ValueError(f"{path}: unknown record {op!r}")


def _artifact(ctx: _Folder, run_id: str, local: Path, artifact_path: str | None) -> None:
    if local.is_dir():  # a folder is logged under its own name, below artifact_path
        ctx.call("log_artifacts", run_id, str(local), "/".join(filter(None, [artifact_path, local.name])))
    else:
        ctx.call("log_artifact", run_id, str(local), artifact_path)


def _model(ctx: _Folder, run_id: str, record: dict, ended: bool) -> None:
    """Register the spooled model as the live job would have. MLflow's start_run/end_run around log_model leave
    the run FINISHED: a run whose end is not replayed yet goes back to RUNNING."""
    import torch

    model = torch.load(ctx.folder / record["model"], weights_only=False)
    example = torch.load(ctx.folder / record["example"], weights_only=False)
    register_torch_model(ctx.client, run_id, model, example, record["name"], record["alias"])
    if not ended:
        ctx.call("update_run", run_id, status="RUNNING")


def _finish(ctx: _Folder) -> None:
    """End the parent as `track end` asked: runs without an end KILLED, the variants' runs with its status (and
their metrics), every job's log under logs/, its status."""
    end, state = ctx.state["end"], ctx.state
    for entry in state["files"].values():
        if entry.get("run_id") and not entry.get("ended"):
            ctx.call("set_terminated", entry["run_id"], status="KILLED", end_time=end["time"])
            entry["ended"] = entry["killed"] = True
            ctx.save()
    if state.get("variants"):
        done = state.setdefault("variants_ended", [])
        variant_runs.end_runs(ctx.call, state["variants"], end["status"], end["time"], end.get("metrics", {}), done, ctx.save)
    logs = ctx.results_dir / "logs"
    if end.get("logs") and logs.is_dir():
        ctx.call("log_artifacts", state["parent_run_id"], str(logs), "logs")
    ctx.call("set_terminated", state["parent_run_id"], status=end["status"], end_time=end["time"])
    state["ended"] = True
    ctx.save()
