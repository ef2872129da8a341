"""Launch by resources: which command starts a training job's processes (tokenforge.launch), and that the
multi-node command's shell parts expand as meant inside a SLURM job."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tokenforge.engine.launch import main, processes_per_node, train_command
from tokenforge.errors import TokenforgeError


@pytest.mark.parametrize(
    "resources, expected",
    [
        ({}, "tokenforge"),
        ({"gpu": 1}, "tokenforge"),
        ({"processes": 2}, "torchrun --standalone --nproc_per_node=2 -m tokenforge.cli"),
        ({"gpu": 4}, "torchrun --standalone --nproc_per_node=4 -m tokenforge.cli"),
        ({"gpu": 4, "processes": 3}, "torchrun --standalone --nproc_per_node=4 -m tokenforge.cli"),  # GPUs win
        ({"gpu": 1, "processes": 2}, "tokenforge"),
    ],
)
def test_one_node(resources, expected):
    assert train_command(**resources) == expected


def test_deepspeed_launcher_on_one_node_passes_no_local_rank_argument():
    cmd = train_command(gpu=2, launcher="deepspeed")
    assert cmd.startswith("deepspeed --no_local_rank --num_gpus 2 --master_port $(") and cmd.endswith("--module tokenforge.cli")
    assert train_command(gpu=1, launcher="deepspeed") == "tokenforge"


def test_several_nodes_start_one_torchrun_per_node_through_srun():
    cmd = train_command(gpu=8, nodes=2)
    assert cmd.startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 ")
    assert "--gpus-per-node=4" in cmd and "torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d" in cmd
    assert cmd.endswith("-m tokenforge.cli")
    one = train_command(processes=2, srun=True)  # mpi: srun on one node, CPUs only
    assert one.startswith("srun --nodes=1 ") and "--gpus-per-node" not in one and "--nproc_per_node=2" in one


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpu": 3, "nodes": 2}, "3 GPUs do not split evenly over 2 nodes"),
        ({"gpu": 8, "nodes": 2, "launcher": "deepspeed"}, "set train.launcher: torchrun"),
        ({"launcher": "mpirun"}, "unknown launcher 'mpirun'"),
        ({"nodes": 0}, "resources.nodes: must be >= 1"),
    ],
)
def test_impossible_resources_are_one_line_errors(kwargs, message):
    with pytest.raises(TokenforgeError, match=message):
        train_command(**kwargs)


def test_processes_per_node():
    assert processes_per_node(0, 1, 3) == 3
    assert processes_per_node(8, 2, 1) == 4


def test_command_line_prints_the_command_and_a_free_port(capsys):
    assert main(["--gpu", "2"]) == 0
    assert capsys.readouterr().out.strip() == "torchrun --standalone --nproc_per_node=2 -m tokenforge.cli"
    assert main(["--free-port"]) == 0
    assert 0 < int(capsys.readouterr().out) < 65536
    with pytest.raises(SystemExit) as exc:
        main(["--gpu", "3", "--nodes", "2"])
    assert exc.value.code == 2


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_srun_command_expands_inside_a_slurm_job(tmp_path):
    """Stand-ins for squeue, scontrol, srun and torchrun record their arguments: the rendezvous is the job's first
    node, at a port of its own, also where the SLURM plugin's job step removed SLURM_JOB_NODELIST."""
    for name, body in {
        "squeue": 'echo "$*" >> "$LOG.squeue"; echo "gpu-a[07-08]"',
        "scontrol": '[[ $* == "show hostnames gpu-a[07-08]" ]] && echo gpu-a07 && echo gpu-a08',
        "srun": 'echo "srun $*" >> "$LOG"; while [[ $1 == -* ]]; do shift; done; "$@"',  # srun's options, then the command
        "torchrun": 'echo "torchrun $*" >> "$LOG"',
    }.items():
        (tmp_path / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    cmd = train_command(gpu=8, nodes=2) + " train --task 0"
    base = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "123456"}
    for extra, asks_squeue in (({"SLURM_JOB_NODELIST": "gpu-a[07-08]"}, False), ({}, True)):
        log = tmp_path / "log.txt"
        log.unlink(missing_ok=True)
        subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], check=True, env={**base, **extra, "LOG": str(log)})
        srun, torchrun = log.read_text().splitlines()
        assert "--whole" in srun and "--gpus-per-node=4" in srun
        assert "--rdzv_endpoint=gpu-a07:23456" in torchrun and "--rdzv_id=123456" in torchrun  # 20000 + 123456 % 40000
        assert torchrun.endswith("-m tokenforge.cli train --task 0")
        assert Path(f"{log}.squeue").exists() == asks_squeue
        Path(f"{log}.squeue").unlink(missing_ok=True)


def test_deepspeed_launcher_command_picks_its_port_when_it_runs(tmp_path):
    bin_dir = Path(sys.executable).parent
    (tmp_path / "deepspeed").write_text('#!/bin/bash\necho "$@"\n')
    (tmp_path / "deepspeed").chmod(0o755)
    env = {"PATH": f"{tmp_path}{os.pathsep}{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", train_command(gpu=2, launcher="deepspeed")], check=True, env=env,
                         capture_output=True, text=True).stdout.split()
    port = int(out[out.index("--master_port") + 1])
    assert 0 < port < 65536
