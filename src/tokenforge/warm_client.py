"""Warm start, the job's side: `tokenforge STAGE ...` (cli.main) hands its command line, working directory,
environment and stdin/stdout/stderr (file descriptors over the Unix socket in $TOKENFORGE_WARM) to the server of
tokenforge.warm, waits for the worker the server forks, forwards the signals it gets to the worker's process group,
and ends as the worker ended: its exit status, or its signal.

Kept apart from the server (tokenforge.warm), which runs the worker through cli.main: the command imports only this
light module, and neither imports the other's side.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

ENV = "TOKENFORGE_WARM"
# Settings read when a module is imported: a client whose values differ runs cold, as does another Python.
IMPORT_ENV = ("PYTHONPATH", "PYTHONHASHSEED", "DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES", "MPLBACKEND", "TORCH_EXTENSIONS_DIR")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def identity() -> dict:
    """What must match between a client and the server for a worker to run what the client would have."""
    import tokenforge

    return {"executable": sys.executable, "tokenforge": tokenforge.__file__, "import_env": {k: os.environ.get(k) for k in IMPORT_ENV}}


def run_client(argv: list[str]) -> int | None:
    """Run `tokenforge argv` in a worker of the server in $TOKENFORGE_WARM; None when it cannot (run cold then)."""
    path = os.environ.get(ENV)
    if not path or "RANK" in os.environ:  # under a launcher every rank runs on its own
        return None
    conn = _connect(Path(path))
    if conn is None:
        return None
    with conn:
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), **identity()}
        message = (json.dumps(request) + "\n").encode()
        try:
            socket.send_fds(conn, [message], [0, 1, 2])
            reader = conn.makefile("r")
            reply = json.loads(reader.readline() or "{}")
        except (OSError, ValueError):
            return None
        if "pid" not in reply:  # refused: another Python or other import-time settings
            return None
        return _wait(reader, reply["pid"])


def _connect(path: Path, wait_s: float = 30.0) -> socket.socket | None:
    """A connection to a ready server; waits while one is starting (its pid file without its socket yet)."""
    pidfile = path.with_suffix(".pid")
    deadline = time.monotonic() + wait_s
    while not path.exists():
        if not _alive(pidfile) or time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def _wait(reader, pid: int) -> int:
    """Forward signals to the worker's process group until the server reports how it ended; end the same way."""

    def forward(signum, _frame):
        try:
            os.killpg(pid, signum)
        except OSError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    while True:
        try:
            line = reader.readline()
            break
        except InterruptedError:  # pragma: no cover - Python retries reads after a handler since 3.5
            continue
    result = json.loads(line) if line else {"signal": int(signal.SIGKILL)}
    if "signal" in result:  # die as the worker died, so a caller sees the same status as for a cold job
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        sys.stdout.flush()
        os.kill(os.getpid(), result["signal"])
        time.sleep(1)
        return 128 + result["signal"]
    return int(result["exit"])
