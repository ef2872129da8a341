"""Warm start: one server per pipeline run imports torch, timm, DeepSpeed, scikit-learn and tokenforge once, then
forks a process for every job, so a job starts in milliseconds instead of seconds.

Measured on a 2-core laptop CPU: a job spent 3-5 s importing before its first useful step (torch 1.0 s, torch._dynamo
1.0 s through timm/torchvision, DeepSpeed 1.2 s, scikit-learn 1.1 s), and the default pipeline runs 16 jobs.

    python -m tokenforge.warm serve --socket PATH [--parent-pid PID] [--idle-timeout S]

The Snakefile's onstart starts the server for a local run on a CPU-only torch and puts its socket in
$TOKENFORGE_WARM; `tokenforge STAGE ...` (cli.main) then hands its command line, working directory, environment
and stdin/stdout/stderr (passed as file descriptors over the Unix socket) to the server, which forks a worker that
runs exactly what the command would have run, in a fresh process image of the preloaded modules. The command
waits for the worker, forwards the signals it gets to the worker's process group and exits with the worker's
status (or dies by the worker's signal). That is the command's side, tokenforge.warm_client; this module is the
server's. Without a server, or when the server refuses (another Python, other import-time settings), the command
runs as usual in its own process: warm start changes how fast a job starts, never what it computes (tests check
that a warm and a cold job write the same bytes).

The server never runs a torch operation itself (its forked workers would inherit busy thread pools) and never
starts a GPU runtime (CUDA cannot be used after fork): it serves only CPU-only torch builds. It leaves when the
process that started it (Snakemake) is gone, after an idle period, or on SIGTERM. The socket lives in a folder
only its user can enter: whoever reaches it can run commands as that user.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from tokenforge.warm_client import ENV, FORWARDED, identity

# Libraries the jobs import (inside their functions), then every tokenforge module; a module missing here is simply
# imported by the job. BLIP's (3.6 s) only for the text families: `serve --with` (warm.smk passes them).
PRELOAD = (
    "torch", "sklearn.datasets", "webdataset", "pyarrow.parquet", "PIL.Image",  # shard
    "vector_quantize_pytorch", "safetensors.torch",  # tokenizer, tokenize
    "timm.models.vision_transformer", "deepspeed", "sklearn.linear_model", "pyarrow.dataset",  # train
    "matplotlib", "mlflow",  # package, track
)  # fmt: skip
TEXT_PRELOAD = ("transformers", "transformers.models.blip", "tokenizers", "pycocoevalcap.bleu.bleu", "pycocoevalcap.cider.cider")


def socket_path(results_dir: str | os.PathLike) -> Path:
    """The server's socket for a results folder: in a folder of this user only (short: sockets allow ~100 bytes)."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"tokenforge-warm-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    if base.stat().st_uid != os.getuid() or base.stat().st_mode & 0o077:
        raise PermissionError(f"{base}: not a private folder of this user; warm start is off")
    digest = hashlib.sha256(str(Path(results_dir).resolve()).encode()).hexdigest()[:16]
    return base / f"{digest}.sock"


# ---------------------------------------------------------------------------------------------------- server


def _finish() -> None:
    """A worker's end as the interpreter's own, less the teardown of every preloaded module (seconds for torch):
    wait for the job's threads, run its exit handlers, flush."""
    import atexit
    import threading

    threading._shutdown()  # what the interpreter does first at exit: join non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


class Server:
    def __init__(self, path: Path, parent_pid: int | None, idle_timeout: float):
        self.path, self.parent_pid, self.idle_timeout = path, parent_pid, idle_timeout
        self.pid = os.getpid()
        self.workers: dict[int, socket.socket] = {}  # worker pid -> its client's connection
        self.started: dict[int, tuple[float, str]] = {}  # worker pid -> (when, what), for the log
        self.selector = selectors.DefaultSelector()
        self.last_active = self.began = time.monotonic()

    def plan(self, extra: tuple[str, ...] = ()) -> None:
        """What to import, in the order the default pipeline's jobs first need it; `serve` imports one module at a
        time between requests, so the first jobs start before everything is in."""
        import pkgutil

        import tokenforge

        self.pending = [*PRELOAD, *extra]
        self.pending += [m.name for m in pkgutil.walk_packages(tokenforge.__path__, "tokenforge.") if not m.name.endswith("__main__")]
        self.identity = identity()

    def _preload_next(self) -> None:
        import importlib
        import threading

        name = self.pending.pop(0)
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional library: the job imports (or misses) it itself
            print(f"warm: not preloaded: {name} ({type(exc).__name__}: {exc})", file=sys.stderr)
        if threading.active_count() > 1:  # a thread holding a lock at fork time would deadlock a worker
            names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
            raise RuntimeError(f"warm: importing {name} started threads ({names}); not serving")
        if not self.pending:
            print(f"warm: everything imported after {time.monotonic() - self.began:.1f} s", file=sys.stderr, flush=True)

    def serve(self) -> None:
        """Listen, fork a worker per request, report how each ended; import the planned modules in between."""
        tmp = self.path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        self.listener = listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp))
        listener.listen(16)
        os.replace(tmp, self.path)
        self.inode = self.path.stat().st_ino
        self.wake_r, self.wake_w = wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through the wake-up socket
        signal.signal(signal.SIGTERM, lambda *_: self._leave())
        self.selector.register(listener, selectors.EVENT_READ, "listener")
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        try:
            while self._keep_going():
                for key, _ in self.selector.select(timeout=0 if self.pending else 1.0):
                    if key.data == "listener":
                        self._accept(listener)
                    elif key.data == "wake":
                        wake_r.recv(4096)
                    else:  # a client's connection: readable means it went away
                        self._client_gone(key.fileobj, key.data)
                self._reap()
                if self.pending:
                    self._preload_next()
        finally:
            if os.getpid() == self.pid:
                _unlink_if(self.path, lambda st: st.st_ino == self.inode)  # not a newer server's socket

    def _leave(self) -> None:
        raise SystemExit(0)

    def _keep_going(self) -> bool:
        if self.parent_pid is not None and not _pid_alive(self.parent_pid):
            return False
        if self.workers:
            self.last_active = time.monotonic()
        return time.monotonic() - self.last_active < self.idle_timeout

    def _accept(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        try:
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(message.decode())
        except (OSError, ValueError):
            conn.close()
            return
        refusal = self._refusal(request, fds)
        if refusal:
            for fd in fds:
                os.close(fd)
            _send(conn, {"refused": refusal})
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._work(request, fds, conn)  # never returns: the worker ends in os._exit
        for fd in fds:
            os.close(fd)
        self.started[pid] = (time.monotonic(), _describe(request["argv"]))
        print(f"warm: worker {pid} runs {self.started[pid][1]}", file=sys.stderr, flush=True)
        self.workers[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        _send(conn, {"pid": pid})
        self.last_active = time.monotonic()

    def _refusal(self, request: dict, fds: list[int]) -> str | None:
        if len(fds) != 3:
            return "expected stdin, stdout and stderr"
        theirs = {k: request.get(k) for k in self.identity}
        if theirs != self.identity:
            return f"the server was started with other settings: {self.identity} != {theirs}"
        return None

    def _work(self, request: dict, fds: list[int], conn: socket.socket) -> None:
        """In the forked worker: become the job (its fds, directory, environment, arguments), run it, exit."""
        os.setpgid(0, 0)  # the client signals this group: the job and anything it starts
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, *FORWARDED):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for other in [*self.workers.values(), self.listener, self.wake_r, self.wake_w]:
            other.close()
        self.selector.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        conn.close()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(ENV, None)  # what the job starts runs cold
        sys.argv = ["tokenforge", *request["argv"]]
        from tokenforge.cli import main

        try:
            code = main(request["argv"])
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            _finish()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            code = 130
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        _finish()
        os._exit(code)

    def _client_gone(self, conn: socket.socket, pid: int) -> None:
        """A client that went away without a word (killed): its job goes too, as a cold job's would."""
        self.selector.unregister(conn)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.workers.pop(pid, None)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                end = {"signal": os.WTERMSIG(status)}
            else:
                end = {"exit": os.WEXITSTATUS(status)}
            _send(conn, end)
            began, what = self.started.pop(pid)
            print(f"warm: worker {pid} ({what}) ended with {end} after {time.monotonic() - began:.1f} s", file=sys.stderr, flush=True)
            try:
                self.selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            conn.close()
            self.last_active = time.monotonic()


def _describe(argv: list[str]) -> str:
    """`tokenforge STAGE [--task T] [--out OUT]`: enough of a job's command line to find it in the log."""
    words = ["tokenforge", *argv[:1]]
    for flag in ("--task", "--out"):
        if flag in argv[:-1]:
            words += [flag, argv[argv.index(flag) + 1]]
    return " ".join(words)


def _unlink_if(path: Path, ours) -> None:
    try:
        if ours(path.stat()):
            path.unlink()
    except (OSError, ValueError):
        pass


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall((json.dumps(message) + "\n").encode())
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _gpu_visible() -> bool:
    """Whether torch sees a GPU, asked through NVML, which (unlike the CUDA runtime) leaves forked workers free to
    start CUDA; without NVML torch falls back to the runtime, and then there is no GPU to spoil anyway."""
    saved = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    try:
        import torch

        return torch.cuda.is_available()
    finally:
        if saved is None:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK")
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved


def serve(path: Path, parent_pid: int | None = None, idle_timeout: float = 600.0, extra: tuple[str, ...] = ()) -> int:
    """Run a server on `path` until its parent is gone, it idled `idle_timeout` s, or SIGTERM."""
    pidfile = path.with_suffix(".pid")  # first: clients wait for a server that is starting
    pidfile.write_text(str(os.getpid()))
    server = Server(path, parent_pid, idle_timeout)
    try:
        if _gpu_visible():
            print("warm: a GPU is visible, and CUDA cannot start in forked workers; not serving", file=sys.stderr)
            return 0
        server.plan(extra)
        server.serve()
    finally:
        if os.getpid() == server.pid:
            _unlink_if(pidfile, lambda _: pidfile.read_text() == str(server.pid))
    return 0


def stop(path: Path) -> None:
    """Ask the server on `path` (if any) to leave; its running workers finish on their own."""
    try:
        os.kill(int(path.with_suffix(".pid").read_text()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenforge.warm", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["serve", "stop", "path"], help="serve: run a server; stop: ask it to leave; "
                        "path: print the socket path of --results")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", type=Path, help="the socket path")
    where.add_argument("--results", type=Path, help="a results folder (the socket path is derived from it)")
    parser.add_argument("--parent-pid", type=int, default=None, help="leave when this process is gone")
    parser.add_argument("--idle-timeout", type=float, default=600.0, help="leave after this many seconds without a job")
    parser.add_argument("--with", dest="extra", nargs="*", default=[], metavar="MODULE",
                        help=f"also preload these modules, e.g. the text families' {' '.join(TEXT_PRELOAD)}")
    args = parser.parse_args(argv)
    path = args.socket or socket_path(args.results)
    if args.action == "path":
        print(path)
        return 0
    if args.action == "stop":
        stop(path)
        return 0
    return serve(path, args.parent_pid, args.idle_timeout, tuple(args.extra))


if __name__ == "__main__":
    sys.exit(main())
