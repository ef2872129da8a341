"""Running the real pipeline from tests: the repository, the tiny config, and Snakemake with the venv off PATH."""

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


TINY = """
run: tiny
tokenizer: {codebook_size: 32, code_dim: 8, hidden_dim: 16, epochs: 2}
split: {tasks: 2, classes_per_task: 2}
train: {epochs: 2, embed_dim: 32, depth: 2, log_every: 2}
memory: {method: coretokenset, selection: herding, scorer: chefer, token_fraction: 0.5, budget: "20%"}
"""


# TINY learns its first task: accuracy on task 0 after training it (2 classes, chance 0.5) is above this.
FIRST_TASK_ABOVE = 0.6


# Programs a rule once found on PATH. Jobs must start them through the Python that runs Snakemake instead
# (`python -m tokenforge`, `-m torch.distributed.run`, ...; common.smk), so every Snakemake run of these tests has
# the venv's bin folder off PATH and stand-ins for these names first on it, which fail loudly when called.
DECOYS = ("tokenforge", "torchrun", "deepspeed", "python", "python3")


RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@functools.cache
def decoy_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="tokenforge-decoys-"))
    atexit.register(shutil.rmtree, folder, True)
    for name in DECOYS:
        (folder / name).write_text(f'#!/bin/sh\necho "decoy {name} on PATH was called: $0 $*" >&2\nexit 127\n')
        (folder / name).chmod(0o755)
    return folder


def pipeline_env(**extra: str) -> dict:
    """The environment of a Snakemake run: PATH without this venv's bin folder (and without an activated venv),
    decoys first; no ambient MLflow store; no DeepSpeed rendezvous left in this process by in-process tests."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIRTUAL_ENV", *RENDEZVOUS)}
    venv_bins = {BIN.resolve(), Path(sys.prefix).resolve() / "bin"}
    kept = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() not in venv_bins]
    env["PATH"] = os.pathsep.join([str(decoy_dir()), *kept])
    return {**env, **extra}


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    return [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_command(workdir, *args), capture_output=True, text=True, env=pipeline_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def write_config(workdir: Path, text: str) -> str:
    path = workdir / "extra.yaml"
    path.write_text(text)
    return str(path)

