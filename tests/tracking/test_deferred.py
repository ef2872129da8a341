"""Deferred tracking (mlflow.mode): jobs spool their calls without importing MLflow, `tokenforge track sync|end`
replays them into the store, and the store then holds what live tracking would have put there."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tokenforge.tracking.runs import child_run, end_parent, start_parent, tracking_mode
from tokenforge.tracking.spool import SPOOL, now_ms
from tokenforge.tracking.sync import run_id_of, sync


@pytest.fixture(autouse=True)
def _no_ambient_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TOKENFORGE_WARM")}


def tokenforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenforge", *args], capture_output=True, text=True, env=clean_env(),
                          timeout=300)  # fmt: skip


def client_and_parent(results: Path):
    from mlflow import MlflowClient

    info = json.loads((results / "mlflow" / "parent.json").read_text())
    return MlflowClient(info["tracking_uri"]), info


def spool_files(results: Path) -> list[Path]:
    return sorted((results / SPOOL).glob("*/*.jsonl"))


def test_auto_is_deferred_only_for_the_default_store(monkeypatch):
    from tokenforge.errors import TokenforgeError

    assert tracking_mode("auto") == "deferred"
    assert tracking_mode("auto", "http://mlflow:5000") == "live"
    assert tracking_mode("live") == "live" and tracking_mode("deferred", "http://mlflow:5000") == "deferred"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_mode("auto") == "live"
    with pytest.raises(TokenforgeError):
        tracking_mode("later")


# --- a deferred job, synced, is the live job ----------------------------------------------------------------


def a_job(results: Path, data: Path) -> None:
    """A job calling every tracker method but register_model (test below), as the CLI's child_run gives it."""
    stats = data / "out" / "stats.json"
    stats.parent.mkdir(parents=True, exist_ok=True)
    stats.write_text('{"loss": 0.25}')
    with child_run(results, "train", {"task": "1", "run": "r"}, argparse.Namespace(epochs=3, lr=0.1, api_key="k")) as tracker:
        tracker.log_params({"order": [3, 1, 2], "by": "class"})
        for step in range(3):
            tracker.log_metrics({"step_loss": 1.0 / (step + 1), "step_lr": 0.1, "skipped": "text", "flag": True}, step=step)
        tracker.log_metrics({"final_loss": 0.25})
        tracker.set_tags({"phase": "train", "n": 2})
        tracker.log_artifact(stats)
        tracker.log_artifact(stats, "extra")
        tracker.log_dataset("tokens/train.parquet", data / "train.parquet", "training", {"samples": 7})
    stats.write_text('{"loss": "overwritten by a rerun"}')  # the artifact is what the job saw


def artifacts(run) -> dict[str, bytes]:
    root = Path(urlparse(run.info.artifact_uri).path)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def view(client, run) -> dict:
    """What a run holds, without what differs between two stores (ids, times)."""
    rid = run.info.run_id
    run = client.get_run(rid)
    return {
        "name": run.info.run_name,
        "status": run.info.status,
        "params": run.data.params,
        "tags": {k: v for k, v in run.data.tags.items() if k != "mlflow.parentRunId"},
        "metrics": {k: [(m.step, m.value) for m in client.get_metric_history(rid, k)] for k in sorted(run.data.metrics)},
        "artifacts": artifacts(run),
        "datasets": sorted((i.dataset.name, i.dataset.digest, i.dataset.source, i.dataset.profile,
                            tuple((t.key, t.value) for t in i.tags)) for i in run.inputs.dataset_inputs),
    }  # fmt: skip


def tracked_pipeline(root: Path, data: Path, mode: str) -> tuple:
    results = root / "run"
    root.mkdir()
    config = root / "config.resolved.yaml"
    config.write_text("train:\n  epochs: 3\n")
    start_parent(results, params={"train.epochs": 3, "memory.token_secret": "x"}, mode=mode, config=config)
    (results / "logs").mkdir()
    (results / "logs" / "train.log").write_text("trained\n")
    a_job(results, data)
    time.sleep(0.01)
    before_sync = now_ms()  # strictly after the job's end, strictly before the sync
    time.sleep(0.01)
    end_parent(results)
    client, info = client_and_parent(results)
    children = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    return client, client.get_run(info["parent_run_id"]), children, before_sync


def test_a_deferred_job_after_sync_is_what_a_live_job_logs(tmp_path):
    data = tmp_path / "data"  # the same input for both: a dataset's source is its path
    data.mkdir()
    (data / "train.parquet").write_bytes(b"x" * 100)
    live_client, live_parent, live_children, _ = tracked_pipeline(tmp_path / "live", data, "live")
    client, parent, children, before_sync = tracked_pipeline(tmp_path / "deferred", data, "deferred")
    assert len(children) == len(live_children) == 1
    deferred = view(client, children[0])
    assert deferred == view(live_client, live_children[0])
    assert view(client, parent) == view(live_client, live_parent)
    # what was checked, so that two empty runs could not pass
    assert deferred["metrics"]["step_loss"] == [(0, 1.0), (1, 0.5), (2, 1 / 3)] and deferred["status"] == "FINISHED"
    assert deferred["params"] == {"epochs": "3", "lr": "0.1", "order": "3,1,2", "by": "class"}
    assert deferred["tags"]["rule"] == "train" and deferred["tags"]["task"] == "1" and deferred["tags"]["n"] == "2"
    assert deferred["artifacts"] == {"stats.json": b'{"loss": 0.25}', "extra/stats.json": b'{"loss": 0.25}'}
    assert deferred["datasets"][0][:2] == ("tokens/train.parquet", live_children[0].inputs.dataset_inputs[0].dataset.digest)
    assert set(view(client, parent)["artifacts"]) == {"config.resolved.yaml", "logs/train.log"}
    assert parent.data.params == {"train.epochs": "3"}
    # the job's own times, not the sync's
    child = children[0]
    assert parent.info.start_time <= child.info.start_time <= child.info.end_time < before_sync
    stamps = [m.timestamp for m in client.get_metric_history(child.info.run_id, "step_loss")]
    assert all(child.info.start_time <= t <= child.info.end_time for t in stamps)


# --- no MLflow in a deferred job ------------------------------------------------------------------------------

NO_MLFLOW = """
import argparse, sys
from pathlib import Path
import torch
from tokenforge.tracking.runs import child_run, start_parent
results, data = Path(sys.argv[1]), Path(sys.argv[2])
start_parent(results, params={"a": 1}, mode="auto")
with child_run(results, "package", {}, argparse.Namespace(x=1)) as tracker:
    tracker.log_params({"y": 2})
    tracker.log_metrics({"m": 1.0}, step=1)
    tracker.set_tags({"t": "v"})
    tracker.log_artifact(data)
    tracker.log_dataset("d", data, "training")
    tracker.register_model(torch.nn.Linear(4, 2), torch.zeros(1, 4), "m")
    assert tracker.enabled
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "mlflow")
assert not loaded, loaded
"""


def test_a_deferred_job_never_imports_mlflow(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("x")
    proc = subprocess.run([sys.executable, "-c", NO_MLFLOW, str(tmp_path / "results"), str(data)], capture_output=True,
                          text=True, env=clean_env(), timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [spool] = spool_files(tmp_path / "results")
    ops = [json.loads(line)["op"] for line in spool.read_text().splitlines()]
    assert ops == ["start", "params", "params", "metrics", "tags", "artifact", "dataset", "model", "end"]


def test_a_deferred_cli_job_never_imports_mlflow(tmp_path):
    """The real command line: `tokenforge split --track` under `python -X importtime` lists no mlflow module."""
    results, classes = tmp_path / "results", tmp_path / "classes.json"
    classes.write_text('["a", "b", "c", "d"]')
    assert tokenforge("track", "start", str(results), "-q").returncode == 0
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tokenforge", "split", "--classes", str(classes), "--out",
         str(tmp_path / "split"), "--tasks", "2", "--track", str(results), "-q"],
        capture_output=True, text=True, env=clean_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert {"tokenforge.data.split", "tokenforge.tracking.spool"} <= set(imported)  # the job ran, and spooled
    assert not [m for m in imported if m.split(".")[0] == "mlflow"]
    assert json.loads((results / "mlflow" / "parent.json").read_text())["mode"] == "deferred"
    assert [json.loads(line)["op"] for line in spool_files(results)[0].read_text().splitlines()][-1] == "end"


# --- incremental, idempotent ----------------------------------------------------------------------------------


def test_sync_while_the_job_writes_then_again_logs_nothing_twice(tmp_path):
    results = tmp_path / "run"
    start_parent(results, mode="deferred")
    artifact = tmp_path / "a.txt"
    artifact.write_text("a")
    with child_run(results, "train", {"task": "0"}, argparse.Namespace(x=1)) as tracker:
        for step in range(3):
            tracker.log_metrics({"loss": float(step)}, step=step)
        assert sync(results) == 5  # start, params, three metrics
        client, info = client_and_parent(results)
        run_id = run_id_of(tracker.path)
        assert client.get_run(run_id).info.status == "RUNNING"
        assert client.get_run(info["parent_run_id"]).info.status == "RUNNING"
        for step in range(3, 6):
            tracker.log_metrics({"loss": float(step)}, step=step)
        tracker.log_artifact(artifact)
        with open(tracker.path, "a") as handle:  # a line being written when the sync reads
            handle.write('{"op":"metrics","t":%d,"step":9,"metrics":{"loss":' % now_ms())
        assert sync(results) == 4
        with open(tracker.path, "a") as handle:
            handle.write("9.0}}\n")
    assert sync(results) == 2  # the completed line and the end
    assert sync(results) == 0 and sync(results) == 0
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in (0, 1, 2, 3, 4, 5, 9)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"x": "1"}
    assert [a.path for a in client.list_artifacts(run_id)] == ["a.txt"]
    end_parent(results)
    end_parent(results)  # a second `track end`: nothing left to do
    assert client.get_run(info["parent_run_id"]).info.status == "FINISHED"
    assert len(client.search_runs([info["experiment_id"]])) == 2


# --- statuses ---------------------------------------------------------------------------------------------------

KILLED_JOB = """
import argparse, os, signal, sys
from tokenforge.tracking.runs import child_run
with child_run(sys.argv[1], "evaluate", {"task": "1"}, argparse.Namespace()) as tracker:
    tracker.log_metrics({"accuracy": 0.5})
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_failed_job_is_failed_killed_job_running_until_track_end_marks_it_killed(tmp_path):
    results = tmp_path / "run"
    start_parent(results, mode="deferred")
    (results / "logs").mkdir()
    (results / "logs" / "evaluate.log").write_text("log\n")
    with child_run(results, "split", {}, argparse.Namespace()):
        pass
    with pytest.raises(RuntimeError):
        with child_run(results, "train", {"task": "0"}, argparse.Namespace()):
            raise RuntimeError("boom")
    proc = subprocess.run([sys.executable, "-c", KILLED_JOB, str(results)], env=clean_env(), timeout=300)
    assert proc.returncode == -9
    sync(results)
    client, info = client_and_parent(results)
    status = {f.name.split("-")[1]: client.get_run(run_id_of(f)).info.status for f in spool_files(results)}
    assert status == {"split": "FINISHED", "train": "FAILED", "evaluate": "RUNNING"}
    killed = client.get_run(run_id_of(next(f for f in spool_files(results) if "-evaluate-" in f.name)))
    assert killed.data.metrics == {"accuracy": 0.5}
    end = tokenforge("track", "end", str(results), "--status", "FAILED", "-q")
    assert end.returncode == 0 and end.stderr == "", end.stderr
    status = {f.name.split("-")[1]: client.get_run(run_id_of(f)).info.status for f in spool_files(results)}
    assert status == {"split": "FINISHED", "train": "FAILED", "evaluate": "KILLED"}
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FAILED"
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "logs")] == ["logs/evaluate.log"]


def test_a_new_start_ends_an_earlier_invocation_that_never_ended_as_killed(tmp_path):
    results = tmp_path / "run"
    start_parent(results, run_name="first", mode="deferred")
    with child_run(results, "split", {}, argparse.Namespace()):
        pass
    first = json.loads((results / "mlflow" / "parent.json").read_text())["spool"]
    start_parent(results, run_name="second", mode="deferred")  # Snakemake was killed before its onerror hook
    with child_run(results, "split", {}, argparse.Namespace()):
        pass
    sync(results)
    client, info = client_and_parent(results)
    runs = {r.info.run_name: r for r in client.search_runs([info["experiment_id"]])}
    assert runs["first"].info.status == "KILLED" and runs["second"].info.status == "RUNNING"
    assert info["parent_run_id"] == runs["second"].info.run_id and info["spool"] != first
    children = client.search_runs([info["experiment_id"]], "tags.rule = 'split'")
    assert sorted(c.data.tags["mlflow.parentRunId"] for c in children) == sorted([runs["first"].info.run_id, info["parent_run_id"]])


# --- the model registry -----------------------------------------------------------------------------------------


def test_registered_model_and_alias_after_sync(tmp_path):
    import mlflow.pytorch
    import torch

    results = tmp_path / "run"
    start_parent(results, mode="deferred")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    with child_run(results, "package", {}, argparse.Namespace()) as tracker:
        assert tracker.enabled  # what tokenforge.report.package.register_final_model asks first
        tracker.register_model(model, torch.zeros(1, 4), "tiny-model")
        tracker.log_metrics({"final_average_accuracy": 0.5})
    end_parent(results)
    client, info = client_and_parent(results)
    run_id = run_id_of(spool_files(results)[0])
    version = client.get_model_version_by_alias("tiny-model", "latest-run")
    assert version.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    mlflow.set_tracking_uri(info["tracking_uri"])
    served = mlflow.pytorch.load_model("models:/tiny-model@latest-run")
    x = torch.ones(3, 4)
    assert torch.equal(served(x), model(x))
    assert mlflow.models.get_model_info("models:/tiny-model@latest-run").signature is not None


# --- a broken store ---------------------------------------------------------------------------------------------


def test_broken_store_track_end_warns_once_keeps_the_spool_and_sync_retries(tmp_path):
    results = tmp_path / "run"
    (tmp_path / "a-file").write_text("not a folder")  # a store nobody can create, not even root
    start_parent(results, tracking_uri=f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}", mode="deferred")
    with child_run(results, "split", {}, argparse.Namespace(seed=0)) as tracker:
        tracker.log_metrics({"tasks": 2})
    end = tokenforge("track", "end", str(results), "-q")
    assert end.returncode == 0
    lines = end.stderr.strip().splitlines()
    assert len(lines) == 1 and "spool" in lines[0] and "kept" in lines[0] and "WARNING" in lines[0], end.stderr
    [spool] = spool_files(results)
    assert spool.is_file() and run_id_of(spool) is None
    by_hand = tokenforge("track", "sync", str(results))
    assert by_hand.returncode != 0 and by_hand.stdout == ""
    assert len(by_hand.stderr.strip().splitlines()) == 1 and by_hand.stderr.startswith("tokenforge track: error: ")
    # the store is back (here: another path): a sync replays everything and ends the parent as `track end` asked
    described = spool.parent / "parent.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    described.write_text(json.dumps({**json.loads(described.read_text()), "tracking_uri": uri}))
    again = tokenforge("track", "sync", str(results), "-q")
    assert again.returncode == 0, again.stderr
    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(run_id_of(spool))
    assert run.info.status == "FINISHED" and run.data.metrics == {"tasks": 2.0} and run.data.params == {"seed": "0"}
    parent = MlflowClient(uri).get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"


def test_summary_says_a_deferred_parent_is_not_synced_yet():
    from tokenforge.report import summary

    lines = summary.mlflow_lines({"mode": "deferred", "tracking_uri": "sqlite:////r/mlflow.db", "spool": "k"})
    assert any("not synced yet" in line and "tokenforge track sync" in line for line in lines)
    assert not any("None" in line for line in lines)
