"""Warm start (tokenforge.warm): jobs forked from a server that imported everything once write the same bytes as
cold jobs, end with the same status, die with their command, and fall back to a cold run whenever they must."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.training import token_task_data

from tokenforge.warm import ENV

TOKENFORGE = [sys.executable, "-m", "tokenforge"]
RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, *RENDEZVOUS)}
    return {**env, **extra}


def _start(sock: Path, *flags: str) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "tokenforge.warm", "serve", "--socket", str(sock), *flags],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    deadline = time.time() + 120
    while not sock.exists():
        assert server.poll() is None, server.stdout.read()
        assert time.time() < deadline, "the server did not come up in 120 s"
        time.sleep(0.05)
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sock = tmp_path_factory.mktemp("warm") / "s.sock"
    proc = _start(sock, "--parent-pid", str(os.getpid()))
    yield sock, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not sock.exists()  # it cleans up after itself


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return token_task_data(tmp_path_factory.mktemp("warmdata"), per_class=40)


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return [*TOKENFORGE, "train", "--tokens", str(data / "train.parquet"), "--tokenizer", str(data / "tokenizer"),
            "--split", str(data / "split"), "--task", "0", "--out", str(out), "--epochs", "2", "--embed-dim", "16",
            "--depth", "1", "--batch-size", "16", "--memory-budget", "none", "--memory-samples-per-class", "3",
            "--threads", "1", "-q", *extra]


def _worker_children(server: subprocess.Popen) -> list[int]:
    """The server's live child processes (its workers)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == server.pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
def test_a_warm_training_job_writes_the_bytes_of_a_cold_one(server, data, tmp_path):
    sock, proc = server
    cold = subprocess.run(_train(data, tmp_path / "cold"), capture_output=True, text=True, env=_env())
    assert cold.returncode == 0, cold.stderr
    warm = subprocess.run(_train(data, tmp_path / "warm"), capture_output=True, text=True, env=_env(**{ENV: str(sock)}))
    assert warm.returncode == 0, warm.stderr
    for name in ("model.safetensors", "memory.arrows.zst", "model.json"):
        assert (tmp_path / "cold" / name).read_bytes() == (tmp_path / "warm" / name).read_bytes(), name
    # the job's own output reaches the caller's stdout; DeepSpeed's import-time warning went to the server's log
    assert warm.stdout.splitlines() == [line for line in cold.stdout.splitlines() if "real_accelerator" not in line]


def test_status_and_one_line_errors_come_back_as_from_a_cold_job(server, tmp_path):
    sock, _ = server
    env = _env(**{ENV: str(sock)})
    bad = subprocess.run([*TOKENFORGE, "split", "--classes", str(tmp_path / "missing.json"), "--out", str(tmp_path / "s"),
                          "--tasks", "2"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"tokenforge split: error: {tmp_path / 'missing.json'}: no such file"]
    assert not (tmp_path / "s").exists()
    usage = subprocess.run([*TOKENFORGE, "split", "--out", "x", "--no-such-flag"], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "unrecognized arguments: --no-such-flag" in usage.stderr
    helped = subprocess.run([*TOKENFORGE, "split", "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "--classes" in helped.stdout


def _paused_job(sock: Path, data: Path, out: Path) -> subprocess.Popen:
    """A warm training job held in its memory phase (a test pause), once it says so."""
    env = _env(**{ENV: str(sock), "TOKENFORGE_TEST_PAUSE_BEFORE_MEMORY": "60"})
    job = subprocess.Popen(_train(data, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in job.stdout:
        if "building the memory" in line:
            return job
    raise AssertionError(f"the job ended early with {job.wait()}")


def _no_workers_left(proc: subprocess.Popen) -> bool:
    deadline = time.time() + 20
    while _worker_children(proc):
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_command_takes_its_worker_with_it(server, data, tmp_path, signum):
    """SIGTERM is forwarded (the command then dies by it, as a cold job would); after SIGKILL, which cannot be
    forwarded, the server sees the command's connection close and kills the worker."""
    sock, proc = server
    job = _paused_job(sock, data, tmp_path / "out")
    assert _worker_children(proc)
    job.send_signal(signum)
    assert job.wait(timeout=30) == -signum
    assert _no_workers_left(proc)
    assert not (tmp_path / "out").exists()  # no half-written outputs


def test_without_a_server_or_when_refused_the_command_runs_cold(server, tmp_path):
    sock, _ = server
    for env in (_env(**{ENV: str(tmp_path / "nothing.sock")}), _env(**{ENV: str(sock), "PYTHONHASHSEED": "123"})):
        start = time.time()
        done = subprocess.run([*TOKENFORGE, "split", "--classes", str(tmp_path / "missing.json"), "--out", "x", "--tasks", "2"],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 2 and "no such file" in done.stderr
        assert time.time() - start < 30  # no wait for a server that is not starting


def test_the_server_leaves_with_the_process_that_started_it(tmp_path):
    parent = subprocess.Popen(["sleep", "600"])
    sock = tmp_path / "p.sock"
    proc = _start(sock, "--parent-pid", str(parent.pid))
    parent.kill()
    parent.wait()
    assert proc.wait(timeout=30) == 0
    assert not sock.exists() and not sock.with_suffix(".pid").exists()
