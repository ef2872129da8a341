"""The optional tokenadapt stage in the workflow (35_tokenadapt.smk): off by default; on, it runs after tokenize and
every training job gets `--adapter`; augment.tokenadapt_p without it is a config error before any job."""

from helpers.pipeline import snakemake, write_config


def test_tokenadapt_stage_feeds_every_training_job(workdir):
    text = "tokenadapt: {enabled: true, epochs: 3, width: 32}\naugment: {tokenadapt_p: 0.5}\nsplit: {tasks: 3}"
    out = snakemake(workdir, "-n", "-p", "--configfile", write_config(workdir, text)).stdout
    stage = [line for line in out.splitlines() if " -m tokenforge tokenadapt " in line]
    assert len(stage) == 1
    assert "--shards results/default/shard --tokenizer results/default/tokenizer --out results/default/tokenadapt" in stage[0]
    assert "--epochs 3" in stage[0] and "--width 32" in stage[0] and "--seed 0" in stage[0] and "--enabled" not in stage[0]
    train = [line for line in out.splitlines() if " train --tokens " in line]
    assert len(train) == 3 and all("--adapter results/default/tokenadapt" in line for line in train)
    assert all("--augment-tokenadapt-p 0.5" in line for line in train)
    plain = snakemake(workdir, "-n", "-p").stdout  # the default: no stage, no flag
    assert " tokenadapt " not in plain and "--adapter" not in plain


def test_tokenadapt_p_without_the_stage_is_a_config_error(workdir):
    proc = snakemake(workdir, "-n", "--configfile", write_config(workdir, "augment: {tokenadapt_p: 0.5}"), check=False)
    assert proc.returncode != 0
    assert "config key augment.tokenadapt_p: > 0 needs the adapter: set tokenadapt.enabled to true" in proc.stderr + proc.stdout
    proc = snakemake(workdir, "-n", "--configfile", write_config(workdir, "tokenadapt: {enabled: true, width: 30}"), check=False)
    assert proc.returncode != 0 and "tokenadapt.width" in proc.stderr + proc.stdout
