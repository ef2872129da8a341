"""train.compile, train.adamw, train.lean_engine and train.cpu_heap_cache in the workflow: the flags every training
job gets (a bare YAML `off` included), and bad values rejected before any job."""

import pytest
from helpers.pipeline import snakemake, write_config


def train_commands(workdir, text: str) -> list[str]:
    out = snakemake(workdir, "-n", "-p", "--configfile", write_config(workdir, text)).stdout
    return sorted(line for line in out.splitlines() if " train --tokens " in line)


def test_every_training_job_gets_the_speed_flags(workdir):
    plain = train_commands(workdir, "{}")
    assert plain and all("--compile off --adamw auto --lean-engine --cpu-heap-cache" in line for line in plain)
    # YAML reads a bare `off` as false: still the choice "off"
    other = train_commands(workdir, "train: {compile: off, adamw: fused, lean_engine: false, cpu_heap_cache: false}")
    assert other and all("--compile off --adamw fused --no-lean-engine --no-cpu-heap-cache" in line for line in other)
    compiled = train_commands(workdir, "train: {compile: reduce-overhead}")
    assert compiled and all("--compile reduce-overhead " in line for line in compiled)


@pytest.mark.parametrize("text, key", [("train: {compile: fast}", "train.compile"), ("train: {adamw: apex}", "train.adamw")])
def test_bad_speed_options_are_rejected_before_any_job(workdir, text, key):
    proc = snakemake(workdir, "--configfile", write_config(workdir, text), check=False)
    assert proc.returncode != 0 and f"config key {key}" in proc.stderr + proc.stdout
    assert not (workdir / "results").exists()
