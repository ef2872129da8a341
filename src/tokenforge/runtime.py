"""Small shared pieces of every stage: seeding (`seed_everything`, `task_seed`), progress bars, the compute device."""

from __future__ import annotations

import os
import random
import sys
from typing import Iterable, TypeVar

from tokenforge.errors import TokenforgeError

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same config and seed give the same results on a CPU."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Some CPU kernels (accumulating index_put in the backward of an indexed lookup) are not
    # deterministic with several threads unless asked to be.
    torch.use_deterministic_algorithms(True, warn_only=True)


def task_seed(seed: int, task: int) -> int:
    """The seed of task `task`'s own random draws (batch order, replay, augmentations, memory selection and scoring)
    in a run seeded `seed`: distinct for every task of a sequence of fewer than 1000 tasks and for every run seed."""
    return seed * 1000 + task


def progress(iterable: Iterable[T] | None = None, **kwargs) -> "Iterable[T]":
    """A tqdm bar on stderr; updates once per second when stderr is a log file, not a terminal.

    `tokenforge -q` (or TQDM_DISABLE=1) turns bars off.
    """
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 5.0)
    kwargs.setdefault("disable", os.environ.get("TQDM_DISABLE") == "1")
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, file=sys.stderr, **kwargs)


def compute_device():
    """The device a process computes on: its GPU where CUDA is there (LOCAL_RANK's, under a launcher), else the CPU.

    CUDA_VISIBLE_DEVICES="" keeps a job on the CPU on a GPU machine."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def job_device(name: str = "auto"):
    """The torch device a `--device` flag names: auto is `compute_device()` (the job's GPU, else the CPU)."""
    import torch

    if name == "auto":
        return compute_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TokenforgeError(f"--device {name!r}: not a torch device (auto, cpu, cuda, cuda:0, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TokenforgeError(f"--device {name}: CUDA is not available on this machine")
    return device


def steady_heap(threshold: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes, so a job that allocates and frees large buffers batch after
    batch (an encoder's activations) returns them to the system instead of leaving a fragmented heap that grows
    with the number of batches (measured: a tokenize job's peak RSS 1.17 -> 1.46 GiB for 4x the images without
    it). glibc raises the threshold by itself after each large free unless it is set; False where there is no glibc."""
    import ctypes
    import ctypes.util

    M_MMAP_THRESHOLD = -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def job_resources() -> dict:
    """This process's own peak resident memory (MiB) and CPU seconds so far, for a job's stats.json.

    Measured in the job itself because a warm-started job is a fork of the warm server (tokenforge.warm), whose
    Snakemake benchmark file sees only the thin client. Peak RSS is Linux's VmHWM (a fork starts from the pages it
    shares with its parent, so it counts those too); elsewhere ru_maxrss. CPU time is user + system, children
    (e.g. data-loader workers) included."""
    import resource

    peak_kib = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    peak_kib = int(line.split()[1])
    except OSError:
        pass
    self_usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    if peak_kib is None:
        peak_kib = self_usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    cpu = self_usage.ru_utime + self_usage.ru_stime + children.ru_utime + children.ru_stime
    return {"peak_rss_mb": round(peak_kib / 1024, 1), "cpu_s": round(cpu, 3)}
