"""An experiment's variants in MLflow: under the parent run of the experiment folder E, one child run per variant of
its grid, and each job of a variant a child of that run (parent -> variant -> job), all in E's store.

E/experiment.json (written by the onstart hook) lists the variants: name, dir (its folder, relative to E), params
(the grid's values, dotted config keys) and group. `tokenforge track start E --variants E/experiment.json` makes each
variant's run (named after it; params: its resolved config E/<dir>/config.resolved.yaml flattened when there,
then its grid params; tags variant, variant_group, grid.<key>) and writes E/<dir>/mlflow/parent.json, which a job
run with `--track E/<dir>` reads as it reads any parent.json:

  live      {"mode", "tracking_uri", "experiment_id", "parent_run_id": the variant's run, "variant": its name,
             "experiment_dir": E relative to E/<dir>, "experiment_run_id": E's parent run}
  deferred  {"mode", "tracking_uri", "experiment", "spool": E's spool folder, "variant", "experiment_dir"}: the
            job spools into E/mlflow/spool/<spool>/ and its start names the variant; the sync creates the variant
            runs and adds their ids (experiment_id, parent_run_id, experiment_run_id) here.

E/mlflow/parent.json lists them ("variants": [{"name", "dir"[, "run_id"]}]), so `tokenforge track end E` is
enough: it ends them with the parent's status, each with its headline metrics from E/<dir>/package/metrics.json.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json, write_json
from tokenforge.tracking.base import PARENT_FILE, param_batches, param_value, retry_locked

log = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.json"
CONFIG_FILE = "config.resolved.yaml"
METRICS_FILE = Path("package") / "metrics.json"
# Keys of E's parent.json a variant's copies: where the store is and, deferred, the spool folder its jobs append to.
_SHARED = ("mode", "tracking_uri", "experiment", "experiment_id", "spool")


def read_variants(path: str | os.PathLike) -> list[dict]:
    """The variants of an experiment.json, each {name, dir, params, tags}, but one in E itself (dir "."): a single
    run's parent is its run. A malformed file is a TokenforgeError."""
    data = read_json(path)
    variants = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(variants, list) or not all(isinstance(v, dict) and v.get("name") and v.get("dir") for v in variants):
        raise TokenforgeError(f'{path}: expected {{"variants": [{{"name", "dir", "params", "group"}}, ...]}}')
    names = [str(v["name"]) for v in variants]
    if len(set(names)) < len(names):
        raise TokenforgeError(f"{path}: variant names repeat ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    found = []
    for variant in variants:
        if os.path.normpath(str(variant["dir"])) == ".":  # a grid of one: the parent run is the variant's
            continue
        params = dict(variant.get("params") or {})
        tags = {"variant": variant["name"], "variant_group": variant.get("group"), **{f"grid.{k}": v for k, v in params.items()}}
        tags = {k: param_value(v) for k, v in tags.items() if v is not None}
        found.append({"name": str(variant["name"]), "dir": str(variant["dir"]), "params": params, "tags": tags})
    return found


def caller(client):
    """call("create_run", ...): the client's method of that name, retried on a locked SQLite store."""

    def call(method: str, *args, **kwargs):
        return retry_locked(getattr(client, method), *args, **kwargs)

    return call


def create_run(call, experiment_id: str, parent_run_id: str, variant: dict, start_time: int | None = None) -> str:
    """The run of one variant, a child of the parent run, with its params and tags; its id."""
    tags = {"mlflow.parentRunId": parent_run_id, **variant["tags"]}
    run = call("create_run", experiment_id, start_time=start_time, run_name=variant["name"], tags=tags)
    for batch in param_batches(variant["params"]):
        call("log_batch", run.info.run_id, params=batch)
    return run.info.run_id


def start_live(client, experiment_dir: str | os.PathLike, info: dict, variants: list[dict]) -> list[dict]:
    """Every variant's run under the live parent of `info`, and its parent.json; [{name, dir, run_id}] for E's."""
    call = caller(client)
    ids = {v["name"]: create_run(call, info["experiment_id"], info["parent_run_id"], v) for v in variants}
    write_parent_files(experiment_dir, info, variants, ids)
    return [{"name": v["name"], "dir": v["dir"], "run_id": ids[v["name"]]} for v in variants]


def write_parent_files(experiment_dir, info: dict, variants: list[dict], ids: dict | None = None) -> None:
    """E/<dir>/mlflow/parent.json of every variant (the module docstring): E's `info` with the variant's run, or
    in deferred mode its name, as the parent of the jobs there."""
    experiment_dir = Path(experiment_dir)
    for variant in variants:
        folder = experiment_dir / variant["dir"]
        own = {k: info[k] for k in _SHARED if k in info}
        own.update(variant=variant["name"], experiment_dir=os.path.relpath(experiment_dir.resolve(), folder.resolve()))
        if ids:
            own.update(parent_run_id=ids[variant["name"]], experiment_run_id=info["parent_run_id"])
        write_json(folder / PARENT_FILE, own)


def note_synced(experiment_dir, spool: str, ids: dict, experiment_id: str, parent_run_id: str) -> None:
    """After a sync created the variant runs of spool folder `spool`: their ids into E's parent.json and the
    variants' parent.json, unless a later `track start` wrote those."""
    experiment_dir = Path(experiment_dir)
    top = read_json(experiment_dir / PARENT_FILE) if (experiment_dir / PARENT_FILE).is_file() else {}
    if top.get("spool") != spool:
        return
    top["variants"] = [{**v, "run_id": ids.get(v["name"])} for v in top.get("variants", [])]
    write_json(experiment_dir / PARENT_FILE, top)
    for variant in top["variants"]:
        path = experiment_dir / variant["dir"] / PARENT_FILE
        own = read_json(path) if path.is_file() else {}
        if own.get("spool") == spool and variant["run_id"]:
            ids_now = {"experiment_id": experiment_id, "parent_run_id": variant["run_id"], "experiment_run_id": parent_run_id}
            write_json(path, {**own, **ids_now})


def headlines(experiment_dir, variants: list[dict]) -> dict[str, dict]:
    """Each variant's headline metrics from E/<dir>/package/metrics.json; variants without that file left out."""
    from tokenforge.report.metrics import headline_metrics

    found = {}
    for variant in variants:
        path = Path(experiment_dir) / variant["dir"] / METRICS_FILE
        if not path.is_file():
            continue
        try:
            found[variant["name"]] = headline_metrics(read_json(path))
        except TokenforgeError as exc:  # the variant's run still ends
            log.warning("MLflow: the metrics of variant %s are not logged: %s", variant["name"], exc)
    return found


def end_runs(call, ids: dict, status: str, end_time: int, metrics: dict, done: list | None = None, save=None) -> None:
    """End every variant's run with `status` at `end_time`, after logging its `metrics` (a dict per name). With
    `done` (the names already ended, appended to and `save`d after each), a retry skips what was done."""
    from mlflow.entities import Metric

    for name, run_id in ids.items():
        if done is not None and name in done:
            continue
        items = [Metric(k, float(v), end_time, 0) for k, v in sorted(metrics.get(name, {}).items())]
        if items:
            call("log_batch", run_id, metrics=items)
        call("set_terminated", run_id, status=status, end_time=end_time)
        if done is not None:
            done.append(name)
            save()


def end_live(client, experiment_dir, variants: list[dict], status: str) -> None:
    """`tokenforge track end` of a live experiment: every variant's run ended now, with its headline metrics."""
    ids = {v["name"]: v["run_id"] for v in variants}
    end_runs(caller(client), ids, status, int(time.time() * 1000), headlines(experiment_dir, variants))
