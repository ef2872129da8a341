"""Scatter/gather on the DAG (shard.parts): P shard jobs over slices of the source and one tokenize job per part,
each gathered after; the token files equal one job's."""

import json
import re

import pyarrow.parquet as pq
import pytest
from helpers.pipeline import TINY, snakemake, write_config


def job_counts(dry_run: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    table = dry_run.split("Job stats:", 1)[1]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def test_dry_run_of_16_parts_shows_16_shard_and_16_tokenize_jobs(workdir):
    cfg = write_config(workdir, TINY + "shard: {source: digits, parts: 16}\n")
    counts = job_counts(snakemake(workdir, "-n", "--configfile", cfg).stdout)
    assert counts["shard_part"] == 16 and counts["tokenize_part"] == 16
    assert counts["shard"] == 1 and counts["tokenize"] == 1 and counts["tokenizer"] == 1


def test_one_part_keeps_the_single_jobs(workdir):
    counts = job_counts(snakemake(workdir, "-n").stdout)
    assert "shard_part" not in counts and "tokenize_part" not in counts
    assert counts["shard"] == 1 and counts["tokenize"] == 1


@pytest.mark.slow
def test_three_parts_give_the_token_files_of_one(workdir):
    """The tokens target with shard.parts 3 (shard_size 300: 5 train tars over 3 parts) equals the 1-part run's."""
    tokens = {}
    for parts in (1, 3):
        cfg = write_config(workdir, TINY + f"run: p{parts}\nshard: {{source: digits, shard_size: 300, parts: {parts}}}\n")
        snakemake(workdir, "tokens", "--configfile", cfg)
        tokens[parts] = workdir / "results" / f"p{parts}" / "tokens"
    for split in ("train", "test"):
        one, three = (pq.read_table(tokens[p] / f"{split}.parquet") for p in (1, 3))
        assert one.equals(three) and one.schema.metadata == three.schema.metadata
    stats = json.loads((tokens[3] / "stats.json").read_text())
    assert len(stats["part_resources"]) == 3 and all(r["peak_rss_mb"] > 0 for r in stats["part_resources"])
    shard = workdir / "results" / "p3" / "shard"
    assert sorted(p.parent.name for p in shard.glob("part-*/train-*.tar")) == ["part-000", "part-001", "part-001", "part-002", "part-002"]
