"""family: vqa | captioning in the workflow: the commands of config/vqa.yaml and config/captioning.yaml, configs
rejected before any job, and a small VQA sequence end to end (package, summary with the task matrix, MLflow)."""

import json
import subprocess

import pytest
from helpers.pipeline import BIN, REPO, pipeline_env, snakemake, write_config


def commands(workdir, *configs: str) -> list[str]:
    args = [a for c in configs for a in ("--configfile", c)]
    return snakemake(workdir, "-n", "-p", *args).stdout.splitlines()


@pytest.mark.parametrize("family, tasks", [("vqa", 5), ("captioning", 3)])
def test_example_configs_run_every_stage_of_their_family(workdir, family, tasks):
    lines = commands(workdir, str(workdir / "config" / f"{family}.yaml"))
    shard = [line for line in lines if " shard " in line]
    split = [line for line in lines if " split " in line]
    train = [line for line in lines if " train --tokens " in line]
    evaluate = [line for line in lines if " evaluate --model " in line]
    assert len(shard) == 1 and "--source scenes" in shard[0]
    assert len(split) == 1 and f"--family {family} --tokens results/{family}/tokens/train.parquet" in split[0]
    # the blind control (multimodal.blind_control): one job that trains and evaluates beside the task sequence
    control = [line for line in train if f"--out results/{family}/control/blind " in line]
    assert len(train) == len(evaluate) == tasks + 1 and len(control) == 1
    assert all(f"--family {family}" in line for line in train + evaluate)
    assert f"--task {tasks - 1} " in control[0] and "--previous" not in control[0]
    assert "--blind" in control[0] and "--memory-method joint" in control[0] and f"evaluate --model results/{family}/control/blind" in control[0]
    assert sum("--blind" in line for line in train) == 1
    package = [line for line in lines if " package --evaluations " in line]
    assert len(package) == 1 and f"--controls blind=results/{family}/control/blind/evaluate.json" in package[0]


def test_vqa_runs_in_several_processes_from_the_pretrain_stage(workdir):
    """Every family launches alike (train.processes: torchrun on the CPU) and takes the pretrain stage's model at
    task 0 (for BLIP: its vision encoder)."""
    cfg = write_config(workdir, "train: {processes: 2}\npretrain: {mode: mtm, data: tasks}\n")
    lines = snakemake(workdir, "-n", "-p", "--configfile", str(workdir / "config" / "vqa.yaml"), cfg).stdout.splitlines()
    pretrain = [line for line in lines if " pretrain --mode mtm" in line]
    train = [line for line in lines if " train --tokens " in line and "/control/blind " not in line]
    assert len(pretrain) == 1 and "--data tasks" in pretrain[0]
    assert len(train) == 5 and all("--nproc_per_node=2" in line and "--family vqa" in line for line in train)
    assert [("--init results/vqa/pretrain" in line) for line in train] == [True] + [False] * 4


def test_the_blind_experiment_shares_its_data_and_split_and_trains_one_variant_blind(workdir):
    """config/experiments/vqa_blind.yaml: joint training with the image and without (train --blind), one shard,
    tokenizer and split for both."""
    lines = commands(workdir, str(workdir / "config" / "experiments" / "vqa_blind.yaml"))
    train = [line for line in lines if " train --tokens " in line]
    assert len([line for line in lines if " split " in line]) == 1 and len(train) == 10
    assert sorted("--blind" in line for line in train) == [False] * 5 + [True] * 5
    assert all(("--blind" in line) == ("runs/blind-true/" in line) for line in train)


def test_classification_commands_carry_no_family_flags(workdir):
    lines = commands(workdir, write_config(workdir, "{}"))
    assert any(" split --classes results/default/shard/classes.json" in line for line in lines)
    assert not any("--family" in line for line in lines)


@pytest.mark.parametrize(
    "text, key",
    [
        ("family: vqa\npretrain: {mode: supervised}", "pretrain.data"),  # heldout: a vqa split leaves no classes out
        ("family: captioning\ntokenadapt: {enabled: true}", "family"),
        ("family: vqa\nmultimodal: {pretrained: /blip}\npretrain: {mode: mtm, data: tasks}", "multimodal.pretrained"),
        ("family: vqa\nmultimodal: {blind: true}\nmemory: {method: coretokenset}", "multimodal.blind"),  # no image tokens
        ("family: vqa\nmultimodal: {blind: true, blind_control: true}\nmemory: {method: joint}", "multimodal.blind_control"),
        ("family: chat", "family"),
    ],
)
def test_bad_multimodal_configs_are_rejected_before_any_job(workdir, text, key):
    proc = snakemake(workdir, "--configfile", write_config(workdir, text), check=False)
    assert proc.returncode != 0 and f"config key {key}" in proc.stderr + proc.stdout
    assert not (workdir / "results").exists()


SMALL = """
run: small
shard: {scenes_count: 80, scenes_size: 16}
tokenizer: {codebook_size: 16, code_dim: 4, hidden_dim: 8, epochs: 1}
split: {tasks: 2, classes_per_task: 2}
train: {epochs: 1, embed_dim: 32, depth: 1, num_heads: 2}
"""


@pytest.mark.slow
def test_small_vqa_sequence_end_to_end(workdir):
    from mlflow import MlflowClient

    snakemake(workdir, "--configfile", str(workdir / "config" / "vqa.yaml"), write_config(workdir, SMALL))
    run = workdir / "results" / "small"
    metrics = json.loads((run / "package" / "metrics.json").read_text())
    assert metrics["family"] == "vqa" and metrics["metric"] == "vqa_accuracy"
    R = metrics["score_matrices"]["vqa_accuracy"]["accuracy_matrix"]
    assert R == metrics["accuracy_matrix"] and len(R) == 2
    stats = json.loads((run / "train" / "task-1" / "stats.json").read_text())
    assert 0 < stats["memory_bytes"] <= stats["memory_budget_bytes"] and stats["memory_scorer"] == "atman"
    summary = subprocess.run([str(BIN / "tokenforge"), "summary", str(run)], capture_output=True, text=True, check=True,
                             env=pipeline_env(PATH=str(BIN)), cwd=REPO).stdout  # fmt: skip
    assert "vqa_accuracy matrix" in summary and "after task 1:" in summary
    # the blind control (config/vqa.yaml's multimodal.blind_control): trained once on both tasks, shown beside
    assert "vqa_accuracy against the blind control" in summary and len(metrics["controls"]["blind"]["scores"]["vqa_accuracy"]) == 2
    assert json.loads((run / "control" / "blind" / "stats.json").read_text())["train_items"] > stats["train_items"]
    from tokenforge.models.blip import BlipModel

    assert BlipModel.load(run / "package").settings.task == "vqa"  # the bundled final model loads on its own
    info = json.loads((run / "mlflow" / "parent.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    children = client.search_runs([info["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    by_rule = {(c.data.tags["rule"], c.data.tags.get("task")): c for c in children}
    assert {"loss", "memory_bytes"} <= set(by_rule[("train", "1")].data.metrics)
    assert "vqa_accuracy_task_0" in by_rule[("evaluate", "1")].data.metrics


@pytest.mark.slow
def test_small_vqa_sequence_in_two_processes_from_an_mtm_pretrain(workdir):
    """The pretrain stage (MTM on the sequence's own token grids) starts task 0's BLIP vision encoder, and every task
    trains in two torchrun processes (gloo) whose memories agree; the run goes through to the package."""
    extra = SMALL.replace("num_heads: 2}", "num_heads: 2, processes: 2}") + "pretrain: {mode: mtm, data: tasks, epochs: 1}\n"
    extra += "multimodal: {blind_control: false}\n"  # the control is the first test's
    snakemake(workdir, "--configfile", str(workdir / "config" / "vqa.yaml"), write_config(workdir, extra))
    run = workdir / "results" / "small"
    assert json.loads((run / "pretrain" / "stats.json").read_text())["mode"] == "mtm"
    for t in (0, 1):
        stats = json.loads((run / "train" / f"task-{t}" / "stats.json").read_text())
        assert stats["world_size"] == 2 and stats["family"] == "vqa"
    assert len(json.loads((run / "package" / "metrics.json").read_text())["accuracy_matrix"]) == 2
