"""Tracking against a real `mlflow server` over HTTP: the tiny pipeline logs to it, survives it going away
mid-run, and `log-bundle` backfills afterwards. Also: an unreachable server at the start, and parallel
writers to one SQLite store."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.pipeline import (
    BIN,
    FIRST_TASK_ABOVE,
    REPO,
    TINY,
    pipeline_env,
    snakemake_command,
    write_config,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on 127.0.0.1 at a free port, with its own SQLite store and artifact folder."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.log = open(root / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"mlflow server did not start: {(root / f'server-{self.port}.log').read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers, as a crash would
            self.proc.wait()
        self.log.close()


@pytest.fixture
def workdir(tmp_path):
    import shutil

    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


def env_with(uri: str) -> dict:
    """The pipeline's environment (no venv on PATH: test_workflow.pipeline_env), tracking to `uri`."""
    return pipeline_env(MLFLOW_TRACKING_URI=uri)


def pipeline(workdir: Path, uri: str) -> subprocess.Popen:
    cfg = write_config(workdir, TINY)
    return subprocess.Popen(snakemake_command(workdir, "--configfile", cfg), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env_with(uri))


@pytest.mark.slow
def test_tiny_pipeline_logs_to_a_real_server_over_http(workdir):
    from mlflow import MlflowClient

    server = Server(workdir / "server")
    try:
        proc = pipeline(workdir, server.uri)
        out, _ = proc.communicate(timeout=1200)
        assert proc.returncode == 0, out[-4000:]
        info = json.loads((workdir / "results" / "tiny" / "mlflow" / "parent.json").read_text())
        assert info["tracking_uri"] == server.uri
        client = MlflowClient(server.uri)
        parent = client.get_run(info["parent_run_id"])
        assert parent.info.status == "FINISHED" and parent.data.params["memory.method"] == "coretokenset"
        children = client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
        assert sorted(c.data.tags["rule"] for c in children) == sorted(
            ["shard", "tokenizer", "tokenize", "synonyms", "split", "train", "train", "evaluate", "evaluate", "package"]
        )
        assert all(c.info.status == "FINISHED" for c in children)
        package = next(c for c in children if c.data.tags["rule"] == "package")
        metrics = json.loads((workdir / "results" / "tiny" / "package" / "metrics.json").read_text())
        assert package.data.metrics["final_average_accuracy"] == metrics["final_average_accuracy"]  # what it bundled
        assert metrics["accuracy_matrix"][0][0] > FIRST_TASK_ABOVE, metrics["accuracy_matrix"]  # task 0 was learnt
        assert {a.path for a in client.list_artifacts(package.info.run_id)} >= {"metrics.json", "report.html"}
        assert client.get_model_version_by_alias("tokenforge-vit", "latest-run").run_id == package.info.run_id
        assert not (workdir / "results" / "tiny" / "mlflow.db").exists()  # nothing fell back to a local store
    finally:
        server.kill()


@pytest.mark.slow
def test_server_killed_mid_run_loses_nothing_and_log_bundle_backfills(workdir):
    from mlflow import MlflowClient

    run = workdir / "results" / "tiny"
    server = Server(workdir / "server")
    try:
        proc = pipeline(workdir, server.uri)
        deadline = time.time() + 900
        while not (run / "train" / "task-0" / "stats.json").exists():  # mid-run: after the first training job
            assert proc.poll() is None and time.time() < deadline, "the pipeline ended before its first training job"
            time.sleep(0.5)
        server.kill()
        out, _ = proc.communicate(timeout=1200)
    finally:
        server.kill()
    assert proc.returncode == 0, out[-4000:]
    # nothing lost on disk: every output, the bundle included
    for path in ("package/metrics.json", "package/report.html", "train/task-1/memory.arrows.zst", "tokenforge-results.tar.gz"):
        assert (run / path).is_file(), path
    # each later job said once, in one line, that tracking was off, and went on
    later = (run / "logs" / "evaluate" / "task-1.log").read_text()
    warnings = [line for line in later.splitlines() if "MLflow tracking" in line]
    assert len(warnings) == 1 and "unreachable" in warnings[0], later[-2000:]

    # the same store, served again: the runs from before the kill are there; the bundle backfills the rest
    again = Server(workdir / "server")
    try:
        client = MlflowClient(again.uri)
        experiment = client.get_experiment_by_name("tokenforge")
        before = client.search_runs([experiment.experiment_id])
        assert {"shard", "tokenizer", "tokenize"} <= {r.data.tags.get("rule") for r in before}
        env = env_with(again.uri)
        args = [str(BIN / "tokenforge"), "log-bundle", str(run / "tokenforge-results.tar.gz"), "--run-name", "tiny-backfill", "-q"]
        subprocess.run(args, check=True, env=env, capture_output=True, text=True)
        table = subprocess.run([str(BIN / "tokenforge"), "compare", "-q"], check=True, env=env, capture_output=True, text=True).stdout
        assert "tiny-backfill" in table and "coretokenset" in table
    finally:
        again.kill()


@pytest.mark.slow  # 7-8 s: two CLI processes, each importing MLflow and trying the server that is not there
def test_unreachable_server_at_the_start_warns_once_and_the_job_goes_on(tmp_path):
    port = free_port()  # nothing listens there
    env = env_with(f"http://127.0.0.1:{port}")
    classes = tmp_path / "classes.json"
    classes.write_text('["a", "b", "c", "d"]')
    proc = subprocess.run(
        [str(BIN / "tokenforge"), "split", "--classes", str(classes), "--out", str(tmp_path / "split"), "--tasks", "2",
         "--track", str(tmp_path / "results"), "-q"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "split" / "tasks.json").is_file()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and "goes on without it" in lines[0]
    start = subprocess.run([str(BIN / "tokenforge"), "track", "start", str(tmp_path / "results"), "-q"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0 and len(start.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # 10-36 s on 2 shared cores: eight processes importing MLflow and writing one SQLite store
def test_parallel_jobs_share_one_sqlite_store_without_lock_errors(tmp_path):
    """Eight processes log runs and metrics into one SQLite file at once: none may lose its tracking."""
    from mlflow import MlflowClient

    from tokenforge.tracking.runs import start_parent

    results = tmp_path / "results"
    info = start_parent(results, experiment="parallel", mode="live")  # live jobs: each writes the store itself
    script = (
        "import argparse, sys\n"
        "from tokenforge.tracking.runs import child_run\n"
        "with child_run(sys.argv[1], 'train', {'task': sys.argv[2]}, argparse.Namespace(x=1)) as t:\n"
        "    for step in range(30):\n"
        "        t.log_metrics({'loss': step}, step=step)\n"
        "    assert t.enabled, 'tracking was disabled'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(results), str(i)], stderr=subprocess.PIPE, text=True, env=env)
             for i in range(8)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert not any("locked" in e for e in errors), errors
    runs = MlflowClient(info["tracking_uri"]).search_runs([info["experiment_id"]], "tags.rule = 'train'")
    assert len(runs) == 8 and all(r.data.metrics["loss"] == 29 for r in runs)
