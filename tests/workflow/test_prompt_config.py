"""train.prompts and train.fused_attention in the workflow: the flags every training job gets, and configs rejected
before any job (prompts without a pretrain stage to start task 0 from, bad values)."""

import pytest
from helpers.pipeline import snakemake, write_config


def train_commands(workdir, text: str) -> list[str]:
    out = snakemake(workdir, "-n", "-p", "--configfile", write_config(workdir, text)).stdout
    return sorted(line for line in out.splitlines() if " train --tokens " in line)


def test_every_task_gets_the_prompt_flags_and_task_0_the_backbone(workdir):
    text = ("pretrain: {mode: supervised, data: heldout}\nsplit: {tasks: 4, classes_per_task: 2}\n"
            "train: {prompts: {tokens: 5, deep: true, dropout: 0.1}, fused_attention: false}")
    train = train_commands(workdir, text)
    assert len(train) == 4
    assert all("--prompt-tokens 5 --prompt-deep --prompt-dropout 0.1" in line and "--no-fused-attention" in line for line in train)
    assert [("--init results/default/pretrain" in line) for line in train] == [True, False, False, False]
    plain = train_commands(workdir, "{}")  # the defaults: off
    assert all("--prompt-tokens 0 --no-prompt-deep --prompt-dropout 0.0" in line and "--fused-attention" in line for line in plain)


@pytest.mark.parametrize(
    "text, key",
    [
        ("train: {prompts: {tokens: 5}}", "train.prompts: prompt tuning needs a backbone"),  # no pretrain stage
        ("train: {prompts: {dropout: 1.0}}", "train.prompts.dropout"),
    ],
)
def test_bad_prompt_configs_are_rejected_before_any_job(workdir, text, key):
    proc = snakemake(workdir, "--configfile", write_config(workdir, text), check=False)
    assert proc.returncode != 0 and f"config key {key}" in proc.stderr + proc.stdout
    assert not (workdir / "results").exists()
