"""How a training job starts its processes, from the resources the job was given.

| the job has | command |
|---|---|
| no GPU, `train.processes` 1 | `tokenforge train ...`: one process on the CPU |
| no GPU, `train.processes` N > 1 | N CPU processes (gloo) through torchrun or the deepspeed launcher |
| 1 GPU | `tokenforge train ...`: one process on the GPU |
| G GPUs on one node | G processes, one per GPU (NCCL), through torchrun (default) or the deepspeed launcher |
| `nodes` > 1, or `mpi: srun` | `srun` starts one torchrun per node; they meet at the first node (c10d rendezvous) |

The Snakefile passes the job's `resources` (gpu, nodes, mpi) here, so a profile's `set-resources` or a
command line's `--set-resources train:gpu=4` changes the launch without touching the config. `gpu` is
the job's total (the SLURM plugin asks for `--gpus`), split evenly across its nodes.

The commands are fixed strings (Snakemake re-runs a job whose params change): the deepspeed launcher's
port and the rendezvous endpoint are picked by the job's shell when it runs.

  python -m tokenforge.engine.launch --gpu 8 --nodes 2     # print the command a job with these resources runs
"""

from __future__ import annotations

import argparse

from tokenforge.errors import TokenforgeError

LAUNCHERS = ("torchrun", "deepspeed")
MODULE = "tokenforge.cli"


def processes_per_node(gpu: int, nodes: int, processes: int) -> int:
    """One process per GPU of a node; on CPUs, `processes`."""
    if nodes < 1:
        raise TokenforgeError(f"resources.nodes: must be >= 1, got {nodes}")
    if gpu < 0 or processes < 1:
        raise TokenforgeError(f"resources.gpu must be >= 0 and train.processes >= 1, got {gpu} and {processes}")
    if not gpu:
        return processes
    if gpu % nodes:
        raise TokenforgeError(f"train.gpus: {gpu} GPUs do not split evenly over {nodes} nodes (the job's gpu resource)")
    return gpu // nodes


def train_command(
    gpu: int = 0, nodes: int = 1, processes: int = 1, launcher: str = "torchrun", srun: bool = False, python: str | None = None
) -> str:
    """The command that stands for `tokenforge` in the train rule's shell command.

    With `python` (a quoted interpreter path) every program but srun is a module of that Python: tokenforge,
    torchrun (`torch.distributed.run`) and the deepspeed launcher (`deepspeed.launcher.runner`) are found
    without PATH, and both launchers start their workers with the same Python. Without it, the programs
    are looked up on PATH."""
    programs = _programs(python)
    if launcher not in LAUNCHERS:
        raise TokenforgeError(f"train.launcher: unknown launcher {launcher!r}; expected one of {', '.join(LAUNCHERS)}")
    per_node = processes_per_node(gpu, nodes, processes)
    if nodes > 1 or srun:
        if launcher != "torchrun":
            raise TokenforgeError("train.launcher: several nodes start through srun and torchrun; set train.launcher: torchrun")
        # Runs in the job's shell on its first node: that node hosts the rendezvous, at a port of this job's own.
        # The SLURM plugin's job step keeps only SLURM_JOB_ID of SLURM's variables, so the node list comes from
        # squeue when SLURM_JOB_NODELIST is gone.
        nodelist = '${SLURM_JOB_NODELIST:-$(squeue --noheader --jobs "$SLURM_JOB_ID" --format %N)}'
        head = f'"$(scontrol show hostnames "{nodelist}" | head -n 1)"'
        port = "$((20000 + SLURM_JOB_ID % 40000))"
        # --whole: each node's one task gets all the CPUs the job holds there (srun alone would give it one CPU).
        gpus = f" --gpus-per-node={per_node}" if gpu else ""
        return (
            f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --whole{gpus} --kill-on-bad-exit=1 "
            f"{programs['torchrun']} --nnodes={nodes} --nproc_per_node={per_node} --rdzv_backend=c10d "
            f'--rdzv_endpoint={head}:{port} --rdzv_id="$SLURM_JOB_ID" -m {MODULE}'
        )
    if per_node == 1:
        return programs["tokenforge"]
    if launcher == "deepspeed":
        # --no_local_rank: tokenforge reads LOCAL_RANK from the environment, not a --local_rank argument.
        port = f"$({programs['python']} -m tokenforge.engine.launch --free-port)"
        return f"{programs['deepspeed']} --no_local_rank --num_gpus {per_node} --master_port {port} --module {MODULE}"
    return f"{programs['torchrun']} --standalone --nproc_per_node={per_node} -m {MODULE}"


def _programs(python: str | None) -> dict[str, str]:
    """How the launch names each program: on PATH, or as a module of `python`."""
    if python is None:
        return {"tokenforge": "tokenforge", "torchrun": "torchrun", "deepspeed": "deepspeed", "python": "python"}
    return {"tokenforge": f"{python} -m tokenforge", "torchrun": f"{python} -m torch.distributed.run",
            "deepspeed": f"{python} -m deepspeed.launcher.runner", "python": python}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenforge.engine.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", type=int, default=0, help="the job's GPUs, all nodes together")
    parser.add_argument("--nodes", type=int, default=1, help="the job's nodes")
    parser.add_argument("--processes", type=int, default=1, help="CPU processes per node (without GPUs)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="torchrun", help="launcher on one node")
    parser.add_argument("--srun", action="store_true", help="start through srun even on one node (the job has mpi: srun)")
    parser.add_argument("--python", default=None, help="run every program but srun as a module of this Python (default: from PATH)")
    parser.add_argument("--free-port", action="store_true", help="print a free TCP port on this host and exit")
    args = parser.parse_args(argv)
    if args.free_port:
        print(free_port())
        return 0
    try:
        print(train_command(args.gpu, args.nodes, args.processes, args.launcher, args.srun, args.python))
    except TokenforgeError as exc:
        parser.exit(2, f"tokenforge.engine.launch: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
