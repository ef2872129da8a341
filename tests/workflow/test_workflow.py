"""Workflow tests: the real Snakemake DAG. The end-to-end case runs every stage on a tiny config."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.pipeline import (
    BIN,
    FIRST_TASK_ABOVE,
    REPO,
    TINY,
    pipeline_env,
    snakemake,
    snakemake_command,
    write_config,
)


def test_dry_run_shows_the_task_chain(workdir):
    out = snakemake(workdir, "-n").stdout
    assert "train" in out and "evaluate" in out
    dag = snakemake(workdir, "--dag").stdout
    # task t's training takes task t-1's model and memory: the DAG has the edge train t-1 -> train t
    train = dict(re.findall(r'(\d+)\[label = "train\\n(?:run: \w+\\n)?task: (\d+)"', dag))
    node = {int(task): job for job, task in train.items()}
    edges = set(re.findall(r"(\d+) -> (\d+)", dag))
    assert sorted(node) == [0, 1, 2, 3, 4]
    for t in range(1, 5):
        assert (node[t - 1], node[t]) in edges


def test_lint_is_clean(workdir):
    proc = snakemake(workdir, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "text,key",
    [
        ("train: {epochs: abc}", "train.epochs"),
        ("memory: {token_fraction: 1.5}", "memory.token_fraction"),
        ("memory: {token_fraction: 0}", "memory.token_fraction"),
        ("memory: {budget: '1 MB'}", "memory.budget"),
        ("memory: {method: ewc}", "memory.method"),
        ("memory: {scorer: lrp}", "memory.scorer"),
        ("shard: {source: 'ftp:x'}", "shard.source"),
        ("split: {tasks: 2, order: [1, 1]}", "split.order"),
        ("trian: {epochs: 2}", "(top level)"),
        ("train: {zero_stage: 3}", "train.zero_stage"),
        ("train: {precision: fp16}", "train.precision"),
        ("train: {gradient_accumulation: 0}", "train.gradient_accumulation"),
        ("train: {nodes: 2, gpus: 8, launcher: deepspeed}", "train.launcher"),
        ("pretrain: {mode: bert}", "pretrain.mode"),
        ("memory: {view: fill, fill: mtm}", "memory.fill"),  # no masked-token model to fill with
    ],
)
def test_bad_config_is_rejected_before_any_job(workdir, text, key):
    proc = snakemake(workdir, "--configfile", write_config(workdir, text), check=False)
    assert proc.returncode != 0
    assert f"config key {key}" in proc.stderr + proc.stdout
    assert not (workdir / "results").exists()


@pytest.mark.parametrize(
    "text, resources, launch",
    [
        ("", [], "PY -m tokenforge train "),
        ("train: {gpus: 1}", [], "PY -m tokenforge train "),
        ("train: {gpus: 4}", [], "PY -m torch.distributed.run --standalone --nproc_per_node=4 -m tokenforge.cli train "),
        ("train: {gpus: 2, launcher: deepspeed}", [],
         "PY -m deepspeed.launcher.runner --no_local_rank --num_gpus 2 --master_port $(PY -m tokenforge.engine.launch "
         "--free-port) --module tokenforge.cli train "),
        ("", ["--set-resources", "train:gpu=4"], "PY -m torch.distributed.run --standalone --nproc_per_node=4 "),  # a profile's resources win
        ("train: {gpus: 8, nodes: 2}", [], "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --whole --gpus-per-node=4 "
         "--kill-on-bad-exit=1 PY -m torch.distributed.run --nnodes=2 "),
    ],
)
def test_training_is_launched_from_the_jobs_resources(workdir, text, resources, launch):
    """Every program of the launch is a module of the Python that runs Snakemake (PY): no job needs PATH for it."""
    out = snakemake(workdir, "-n", "-p", *resources, "--configfile", write_config(workdir, text or "{}")).stdout
    commands = [line for line in out.splitlines() if " train --tokens " in line]
    python = re.search(r"(\S*python[\d.]*) -m ", commands[0]).group(1)
    assert Path(python).parent == BIN and Path(python).name.startswith("python"), python  # this venv's, by its path
    assert len(commands) == 5 and all(launch.replace("PY", python) in c for c in commands), commands  # every task
    if "nodes: 2" in text:  # one SLURM task per node, and the job's shell runs srun itself
        assert "mpi=srun" in out and "tasks=2" in out


def test_every_job_runs_the_cli_of_snakemakes_python(workdir):
    """No shell command of a dry run starts a program by a bare name that a venv puts on PATH."""
    out = snakemake(workdir, "-n", "-p", "--configfile", write_config(workdir, "train: {processes: 2}")).stdout
    commands = [line.removeprefix("Shell command: ") for line in out.splitlines() if line.startswith("Shell command:")]
    commands = [c for c in commands if c != "None"]  # rule all
    assert len(commands) == 1 + 1 + 1 + 1 + 1 + 5 + 5 + 1, out  # shard, tokenizer, tokenize, synonyms, split, 5x train and evaluate, package
    for command in commands:
        first = command.split()[0]
        assert Path(first).parent == BIN and " -m tokenforge" in command, command
        programs = re.sub(r"-m \S+", "", command)  # module names are not programs
        assert not re.search(r"(^|[\s(])(tokenforge|torchrun|deepspeed|python3?) ", programs), command


def test_pretrain_stage_starts_task_0_and_feeds_the_mtm_fill_of_every_task(workdir):
    text = "pretrain: {mode: mtm, data: heldout}\nsplit: {tasks: 4, classes_per_task: 2}\nmemory: {view: fill, fill: mtm}"
    out = snakemake(workdir, "-n", "-p", "--configfile", write_config(workdir, text)).stdout
    pretrain = [line for line in out.splitlines() if " pretrain --mode " in line]
    assert len(pretrain) == 1 and "--mode mtm --data heldout" in pretrain[0] and "--split results/default/split" in pretrain[0]
    train = sorted(line for line in out.splitlines() if " train --tokens " in line)
    assert len(train) == 4 and all("--fill-model results/default/pretrain" in line for line in train)
    assert [("--init results/default/pretrain" in line) for line in train] == [True, False, False, False]
    plain = snakemake(workdir, "-n", "-p").stdout  # the default: no pretrain stage at all
    assert " pretrain --mode " not in plain and "--init" not in plain


@pytest.mark.slow
def test_end_to_end_tiny_pipeline(workdir):
    from mlflow import MlflowClient

    cfg = write_config(workdir, TINY)
    snakemake(workdir, "--configfile", cfg)
    run = workdir / "results" / "tiny"
    metrics = json.loads((run / "package" / "metrics.json").read_text())
    R = metrics["accuracy_matrix"]
    assert len(R) == 2 and metrics["final_average_accuracy"] == pytest.approx(sum(R[1]) / 2)
    # Task 0 right after training it, among its 2 classes (chance 0.5): measured 0.736 on its 72 test images (this
    # config, seed 0; 4 standard errors above chance). Later tasks are near chance for 2 epochs, so not checked.
    assert R[0][0] > FIRST_TASK_ABOVE, R
    assert metrics["bytes"]["memory"] == (run / "train" / "task-1" / "memory.arrows.zst").stat().st_size
    token_bytes = (run / "tokens" / "train.parquet").stat().st_size
    for t in (0, 1):  # a core tokenset: chosen samples, half their tokens, within 20% of the token bytes on disk
        stats = json.loads((run / "train" / f"task-{t}" / "stats.json").read_text())
        on_disk = (run / "train" / f"task-{t}" / "memory.arrows.zst").stat().st_size
        assert stats["memory_method"] == "coretokenset" and stats["memory_tokens_per_sample"] == 8
        assert 0 < stats["memory_bytes"] == on_disk <= stats["memory_budget_bytes"] == int(0.2 * token_bytes)
        assert len(stats["memory_samples_per_class"]) == 2 * (t + 1)
    for name in ("report.html", "accuracy_matrix.png", "average_accuracy.png", "accuracy_matrix.csv"):
        assert (run / "package" / name).is_file()
    assert (run / "tokenforge-results.tar.gz").is_file()
    from tokenforge.models.vit import load_model

    assert load_model(run / "package").config.num_classes == 10  # the bundled final model loads on its own

    # MLflow: one parent, one child per job, each with its metrics
    info = json.loads((run / "mlflow" / "parent.json").read_text())
    assert info["tracking_uri"].startswith("sqlite:///")
    client = MlflowClient(info["tracking_uri"])
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["train.epochs"] == "2"
    assert "config.resolved.yaml" in {a.path for a in client.list_artifacts(info["parent_run_id"])}
    logged = {a.path for a in client.list_artifacts(info["parent_run_id"], "logs/train")}
    assert logged == {"logs/train/task-0.log", "logs/train/task-1.log"}  # every job's log, on the parent
    children = client.search_runs(
        [info["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'"
    )
    rules = sorted(c.data.tags["rule"] for c in children)
    assert rules == sorted(
        ["shard", "tokenizer", "tokenize", "synonyms", "split", "train", "train", "evaluate", "evaluate", "package"]
    )
    by_rule = {(c.data.tags["rule"], c.data.tags.get("task")): c for c in children}
    assert "loss" in by_rule[("train", "1")].data.metrics
    tags = by_rule[("train", "1")].data.tags
    assert tags["run"] == "tiny" and tags["snakemake_version"] and tags["git_commit"] and tags["host"]
    history = client.get_metric_history(by_rule[("train", "1")].info.run_id, "step_loss")
    assert len(history) >= 2 and {"max_rss_mb", "step_lr", "step_samples_per_s"} <= set(by_rule[("train", "1")].data.metrics)
    inputs = {(i.dataset.name, i.tags[0].value) for i in client.get_run(by_rule[("train", "1")].info.run_id).inputs.dataset_inputs}
    assert inputs == {("tokens/train.parquet", "training")}
    # the final model is in the registry, alias "latest-run" ("latest" is reserved by MLflow), with a signature, and loads back as a working model
    import mlflow.pytorch
    import torch

    version = client.get_model_version_by_alias("tokenforge-vit", "latest-run")
    assert version.run_id == by_rule[("package", None)].info.run_id
    mlflow.set_tracking_uri(info["tracking_uri"])
    served = mlflow.pytorch.load_model("models:/tokenforge-vit@latest-run")
    assert served(torch.zeros(1, 4, 4, dtype=torch.int64)).shape == (1, 10)
    assert mlflow.models.get_model_info("models:/tokenforge-vit@latest-run").signature is not None
    assert "accuracy_task_0" in by_rule[("evaluate", "1")].data.metrics
    assert "psnr" in by_rule[("tokenizer", None)].data.metrics
    assert all(c.info.status == "FINISHED" for c in children)

    # nothing left to do; a report builds
    assert "Nothing to be done" in snakemake(workdir, "--configfile", cfg, "-n").stdout + snakemake(
        workdir, "--configfile", cfg, "-n"
    ).stderr
    snakemake(workdir, "--configfile", cfg, "--report", str(workdir / "report.html"))
    assert (workdir / "report.html").stat().st_size > 10_000

    summary = subprocess.run(
        [str(BIN / "tokenforge"), "summary", str(run)], capture_output=True, text=True, check=True
    ).stdout
    assert "final average accuracy" in summary and "report.html" in summary


@pytest.mark.slow
def test_pipeline_on_a_seit_token_release(workdir):
    """A release in SeiT's format is a source: imported, no shards or tokenizer, then trained task by task."""
    import numpy as np

    from tokenforge.data.seit import write_seit

    rng = np.random.default_rng(0)
    release = workdir / "release"
    codebook = rng.normal(size=(16, 8)).astype(np.float32)
    for split, n in (("train", 160), ("val", 40)):
        labels = np.arange(n) % 4
        ids = rng.integers(0, 16, (n, 4, 4))
        ids[:, 0, 0] = labels * 3  # learnable: one token tells the class
        write_seit(release, f"imagenet1k-{split}", ids, labels, codebook if split == "train" else None, None)
    cfg = write_config(
        workdir,
        f"run: seit\nshard: {{source: 'seit:{release}'}}\nsplit: {{tasks: 2}}\n"
        "train: {epochs: 2, embed_dim: 32, depth: 1}\nmemory: {budget: null, samples_per_class: 5}\n",
    )
    snakemake(workdir, "--configfile", cfg)
    run = workdir / "results" / "seit"
    assert not (run / "shard").exists() and not (run / "tokenizer").exists()
    metrics = json.loads((run / "package" / "metrics.json").read_text())
    assert len(metrics["accuracy_matrix"]) == 2
    assert (run / "tokens" / "synonyms.json").is_file()


# Task 1 has 3 epochs x 5 steps; step 7 is inside the second epoch (the log says "epoch 1, batch 2"), so the
# resumed job must restore the data order and optimizer state mid-epoch, not only at an epoch's start.
KILL_AT_STEP = 7


@pytest.mark.slow
def test_pipeline_killed_mid_training_resumes_to_the_same_accuracy_matrix(tmp_path):
    """Kill the whole pipeline (Snakemake and its job) at step KILL_AT_STEP of task 1's training; `--unlock` and
    `--rerun-incomplete` resume that job from its checkpoint, and the result equals an uninterrupted run's."""
    import signal
    import time

    text = TINY + "train: {epochs: 3, embed_dim: 32, depth: 2, checkpoint_every: 1}\n"
    runs = {}
    for name in ("whole", "killed"):
        work = tmp_path / name
        shutil.copytree(REPO / "config", work / "config")
        runs[name] = (work, write_config(work, text))
    work, cfg = runs["whole"]
    snakemake(work, "--configfile", cfg)

    work, cfg = runs["killed"]
    proc = subprocess.Popen(snakemake_command(work, "--configfile", cfg), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=pipeline_env(), start_new_session=True)
    ckpt = work / "results" / "tiny" / "checkpoints" / "train" / "task-1"
    target = KILL_AT_STEP  # fixed, so a failure repeats (an unseeded random step could not be rerun)
    deadline = time.time() + 900
    while not ((ckpt / "latest").is_file() and int((ckpt / "latest").read_text()[4:]) >= target):
        assert proc.poll() is None and time.time() < deadline, f"the pipeline ended before step {target} of task 1"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "results" / "tiny" / "train" / "task-1" / "model.safetensors").exists()  # nothing half-written
    snakemake(work, "--configfile", cfg, "--unlock")
    snakemake(work, "--configfile", cfg, "--rerun-incomplete")
    log = (work / "results" / "tiny" / "logs" / "train" / "task-1.log").read_text()
    resumed_at = re.search(r"task 1: resuming from step (\d+)", log)
    assert resumed_at and int(resumed_at[1]) >= target, log[-2000:]
    whole = json.loads((runs["whole"][0] / "results" / "tiny" / "package" / "metrics.json").read_text())
    resumed = json.loads((work / "results" / "tiny" / "package" / "metrics.json").read_text())
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"], resumed_at[0]
    assert not ckpt.exists()


@pytest.mark.slow
def test_tiny_pipeline_with_two_data_parallel_training_processes(workdir):
    """train.processes: 2 launches torchrun (gloo on this CPU): each rank trains on its slice, all ranks build
    the same memory (checked across ranks; rank 0 writes it), and the pipeline runs to the end."""
    import hashlib

    cfg = write_config(workdir, TINY + "train: {epochs: 2, embed_dim: 32, depth: 2, processes: 2}\n")
    snakemake(workdir, "--configfile", cfg)
    run = workdir / "results" / "tiny"
    assert len(json.loads((run / "package" / "metrics.json").read_text())["accuracy_matrix"]) == 2
    for t in (0, 1):
        stats = json.loads((run / "train" / f"task-{t}" / "stats.json").read_text())
        on_disk = (run / "train" / f"task-{t}" / "memory.arrows.zst").read_bytes()
        assert stats["world_size"] == 2 and stats["memory_sha256"] == hashlib.sha256(on_disk).hexdigest()
    log = (run / "logs" / "train" / "task-1.log").read_text()
    assert log.count("task 1: building the memory") == 2  # both ranks built it
