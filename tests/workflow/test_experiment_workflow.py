"""Experiments in the real Snakemake DAG: a 2 x 2 grid whose variants share their upstream jobs, run end to end,
killed and resumed mid-grid, compared over seeds, and grown by a seed; bad grids stop before any job."""

import json
import os
import re
import signal
import subprocess
import time

import pytest
from helpers.pipeline import TINY, pipeline_env, snakemake, snakemake_command, write_config

GRID = TINY + """
data_seed: 0
experiment:
  grid:
    memory: [{method: coreset}, {method: coretokenset, scorer: random}]
    seed: [0, 1]
"""
VARIANTS = ["coreset_s0", "coreset_s1", "coretokenset_random_s0", "coretokenset_random_s1"]


def job_counts(stdout: str) -> dict[str, int]:
    """Snakemake's dry-run 'Job stats' table as {rule: count}."""
    table = stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def test_a_dry_run_lists_each_shared_job_once(workdir):
    counts = job_counts(snakemake(workdir, "-n", "--configfile", write_config(workdir, GRID)).stdout)
    assert counts == {"shard": 1, "tokenizer": 1, "tokenize": 1, "synonyms": 1, "split": 2, "train": 8,
                      "evaluate": 8, "package": 4, "compare": 1, "all": 1}


@pytest.mark.parametrize(
    "grid, message",
    [
        ("{memory.methd: [none]}", "experiment.grid key memory.methd: not a config key"),
        ("{train.epochs: [2, abc]}", "config key train.epochs"),
        ("{seed: []}", "experiment.grid key seed: no values"),
        ("{threads: [1, 2]}", "experiment key threads"),
    ],
)
def test_bad_grids_fail_before_any_job_with_one_line(workdir, grid, message):
    proc = snakemake(workdir, "--configfile", write_config(workdir, TINY + f"experiment: {{grid: {grid}}}\n"), check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (workdir / "results").exists()


def _kill_when(workdir, cfg, done, timeout=900):
    """Start the grid, SIGKILL Snakemake and its jobs once `done()` holds."""
    proc = subprocess.Popen(snakemake_command(workdir, "--configfile", cfg), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=pipeline_env(), start_new_session=True)
    deadline = time.time() + timeout
    while not done():
        assert proc.poll() is None and time.time() < deadline, "the grid ended before the kill"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_a_grid_killed_mid_way_resumes_compares_over_seeds_and_grows_by_a_seed(workdir):
    cfg = write_config(workdir, GRID)
    exp = workdir / "results" / "tiny"
    finished = lambda: sum((exp / "runs" / v / "package" / "metrics.json").is_file() for v in VARIANTS)  # noqa: E731
    _kill_when(workdir, cfg, lambda: finished() >= 1)
    assert finished() < 4
    snakemake(workdir, "--configfile", cfg, "--unlock")
    resumed = snakemake(workdir, "--configfile", cfg, "--rerun-incomplete")
    assert "rule shard:" not in resumed.stdout + resumed.stderr  # shared jobs done before the kill are not redone

    # each shared stage ran once: one data folder, one tokens folder, a split per seed
    shared = sorted(p.name.split("-")[0] for p in (exp / "shared").iterdir() if any(p.iterdir()))
    assert shared.count("data") == 1 and shared.count("tokens") == 1 and shared.count("split") == 2
    assert len(list(exp.glob("shared/data-*/logs/shard.log"))) == 1

    rows = json.loads((exp / "comparison.json").read_text())
    groups = {r["group"]: r for r in rows["groups"]}
    assert set(groups) == {"coreset", "coretokenset_random"}
    accs = [json.loads((exp / "runs" / f"coreset_s{s}" / "package" / "metrics.json").read_text())["final_average_accuracy"]
            for s in (0, 1)]
    assert groups["coreset"]["n"] == 2
    assert groups["coreset"]["mean"]["final_average_accuracy"] == pytest.approx(sum(accs) / 2)
    assert groups["coreset"]["std"]["final_average_accuracy"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert "±" in (exp / "comparison.md").read_text()
    summary = subprocess.run([str(snakemake_command(workdir)[0]).replace("snakemake", "tokenforge"), "summary", str(exp)],
                             capture_output=True, text=True)
    assert "4 finished" in summary.stdout, summary.stdout + summary.stderr

    # MLflow: the invocation's parent run has a child per variant with the grid's settings as params and tags, and
    # the variant's jobs (those this invocation ran) nested under it
    from mlflow import MlflowClient

    info = json.loads((exp / "mlflow" / "parent.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    under = lambda run_id: client.search_runs([info["experiment_id"]], f"tags.mlflow.parentRunId = '{run_id}'")  # noqa: E731
    variants = {r.data.tags["variant"]: r for r in under(info["parent_run_id"]) if "grid.seed" in r.data.tags}
    assert sorted(variants) == sorted(VARIANTS)
    for name, run in variants.items():
        method = "coreset" if name.startswith("coreset") else "coretokenset"
        assert run.data.params["memory.method"] == method and run.data.tags["grid.memory.method"] == method
        assert run.data.tags["grid.seed"] == name[-1] and run.info.status == "FINISHED"
        assert "final_average_accuracy" in run.data.metrics
    nested = [r.data.tags.get("rule") for v in variants.values() for r in under(v.info.run_id)]
    assert "package" in nested and "train" in nested and "shard" not in nested

    # a third seed: only its variants (and its split) run; the rest is up to date
    grown = write_config(workdir, GRID.replace("seed: [0, 1]", "seed: [0, 1, 2]"))
    counts = job_counts(snakemake(workdir, "-n", "--configfile", grown).stdout)
    assert counts == {"split": 1, "train": 4, "evaluate": 4, "package": 2, "compare": 1, "all": 1}
