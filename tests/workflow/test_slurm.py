"""SLURM: the tiny pipeline through a real single-node cluster (tests/workflow/slurm/start_cluster.sh, needs root) with the
repo's SLURM workflow profile and snakemake-executor-plugin-slurm. Skipped where no cluster can be started."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers.pipeline import REPO, TINY, snakemake, write_config

START_CLUSTER = REPO / "tests" / "workflow" / "slurm" / "start_cluster.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
SKIP = 77  # start_cluster.sh: no cluster can be started here (not root, no SLURM to be had, a real slurm.conf)

# The test node is this machine (2 CPUs, ~22 GB, no GPU here): the profile's requests for real clusters (8 CPUs, 16 GB
# and a GPU for train) could never be scheduled on it. These replace the profile's set-resources for this run only.
SMALL_NODE = [f"{rule}:{key}={value}" for rule in ("train", "tokenizer", "tokenize", "tokenize_part", "evaluate")
              for key, value in (("gpu", 0), ("cpus_per_task", 2), ("mem_mb", 3000), ("runtime", 30))]
# Training takes the multi-node launch path on this one node: `mpi` makes the job's shell call srun itself, which
# starts torchrun with a c10d rendezvous at the job's first node, and torchrun starts train.processes = 2 ranks.
# The plugin wants tasks > 1 for an MPI job: 2 tasks of 1 CPU fill the node's 2 CPUs (srun starts 1 task per node).
SRUN = ["train:mpi=srun", "train:tasks=2", "train:cpus_per_task=1"]
# Every job of the tiny pipeline with shard.parts 2 (the scattered shard and tokenize jobs and their gathers); each
# runs as its own SLURM job.
# a 2-variant experiment: the shared stages once, each variant's 2 tasks and package, and the comparison
VARIANTS = ["coreset", "coretokenset"]
SHARED = ["shard_part", "shard_part", "shard", "tokenizer", "tokenize_part", "tokenize_part", "tokenize", "synonyms", "split"]
OWN = ["train", "train", "evaluate", "evaluate", "package"]
JOBS = [*SHARED, *OWN * len(VARIANTS), "compare"]


def start_cluster() -> str:
    """Run start_cluster.sh: its summary line, or a skip (exit 77) or failure with its output."""
    proc = subprocess.run(["bash", str(START_CLUSTER)], capture_output=True, text=True, timeout=900)
    if proc.returncode == SKIP:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    if proc.returncode != 0:
        pytest.fail(f"start_cluster.sh exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_tiny_pipeline_runs_through_slurm(workdir, monkeypatch):
    """Each job is a SLURM job (its own log and job id), runs inside its allocation, and the run completes."""
    from mlflow import MlflowClient

    start_cluster()
    # The partition comes from the environment, as on a real cluster; no account (this cluster has no accounting).
    monkeypatch.setenv("SLURM_PARTITION", "debug")
    monkeypatch.delenv("SLURM_ACCOUNT", raising=False)
    cfg = write_config(
        workdir,
        TINY + "train: {epochs: 2, embed_dim: 32, depth: 2, log_every: 2, processes: 2}\n"
        "shard: {source: digits, shard_size: 500, parts: 2}\n"
        "experiment: {grid: {memory.method: [coreset, coretokenset]}}\n",
    )
    snakemake(
        workdir, "--configfile", cfg, "--workflow-profile", str(PROFILE),
        "--set-resources", *(r for r in SMALL_NODE if r != "train:cpus_per_task=2"), *SRUN,
        "--slurm-status-command", "squeue",  # sacct needs slurmdbd
        "--slurm-init-seconds-before-status-checks", "2",  # poll soon after each submission (default 40 s)
        "--slurm-keep-successful-logs",  # the per-job SLURM logs are the evidence below
        "--latency-wait", "10",
    )
    exp = workdir / "results" / "tiny"
    for variant in VARIANTS:
        assert len(json.loads((exp / "runs" / variant / "package" / "metrics.json").read_text())["accuracy_matrix"]) == 2
    assert "coretokenset" in (exp / "comparison.md").read_text()

    # Every job went through sbatch: one SLURM log per job, under <rule>/<wildcards>/<SLURM job id>.log
    logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    rule_of = {p.stem: p.relative_to(workdir / ".snakemake" / "slurm_logs").parts[0] for p in logs}
    assert sorted(rule_of.values()) == sorted(f"rule_{rule}" for rule in JOBS), logs
    # (the wildcards' values joined by "_": a variant's train job's are its folder's and its task's)
    assert {p.parent.name for p in logs if p.parts[-3] == "rule_train"} == {f"tiny_runs_{v}_{t}" for v in VARIANTS for t in (0, 1)}
    for scattered in ("rule_shard_part", "rule_tokenize_part"):  # one SLURM job per part
        assert {p.parent.name.rsplit("_", 1)[-1] for p in logs if p.parts[-3] == scattered} == {"000", "001"}, logs

    # ... and ran inside its allocation: each job's MLflow child run carries that job's SLURM id
    # (shared jobs under the invocation's parent run, a variant's own under that variant's run; compare logs none)
    info = json.loads((exp / "mlflow" / "parent.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    assert client.get_run(info["parent_run_id"]).info.status == "FINISHED"
    under = lambda run_id: client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{run_id}'")  # noqa: E731
    top = under(info["parent_run_id"])
    variants = [c for c in top if "variant" in c.data.tags and "rule" not in c.data.tags]
    assert sorted(v.data.tags["variant"] for v in variants) == VARIANTS
    children = [c for c in top if "rule" in c.data.tags] + [c for v in variants for c in under(v.info.run_id)]
    # a scattered job's child run is its command's (shard, tokenize), tagged with its part
    tagged = {c.data.tags.get("slurm_job_id"): c.data.tags["rule"] + ("_part" if "part" in c.data.tags else "") for c in children}
    assert len(children) == len(JOBS) - 1 and all(c.info.status == "FINISHED" for c in children)
    assert {job_id: f"rule_{rule}" for job_id, rule in tagged.items()} == {k: v for k, v in rule_of.items() if v != "rule_compare"}
    # The training jobs ran 2 ranks under srun + torchrun, whose rendezvous id is the SLURM job's id
    for child in children:
        if child.data.tags["rule"] == "train":
            assert child.data.tags.get("world_size") == "2", child.data.tags
            assert child.data.tags.get("torchelastic_run_id") == child.data.tags["slurm_job_id"], child.data.tags
    assert all(json.loads((exp / "runs" / v / "train" / f"task-{t}" / "stats.json").read_text())["world_size"] == 2
               for v in VARIANTS for t in (0, 1))

    # SLURM's own record of the last job (squeue keeps finished jobs for MinJobAge = 10 minutes): the partition from
    # the environment, no account (the profile gives none when SLURM_ACCOUNT is unset), completed
    last = max(rule_of, key=int)
    record = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%P|%a|%T", "--jobs", last],
                            capture_output=True, text=True, check=True).stdout.split()
    assert record == ["debug|(null)|COMPLETED"], record
