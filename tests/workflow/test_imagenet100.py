"""config/imagenet100.yaml, the cluster setting: its DAG (32 shard and tokenize parts, 10 tasks), its commented
pixels + timm variant, and a shrunk real run of it through task_0 on a small ImageNet-layout folder."""

import json
import re
from pathlib import Path

import pytest
from helpers.images import make_imagefolder
from helpers.pipeline import REPO, snakemake

CONFIG = REPO / "config" / "imagenet100.yaml"


def job_counts(dry_run: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    table = dry_run.split("Job stats:", 1)[1]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def imagenet_layout(root: Path, train: int, val: int, size=(16, 16)) -> Path:
    """root/train/<wnid>/*.png and root/val/<wnid>/*.png for 100 classes: ImageNet-100's layout."""
    classes = [f"n{k:08d}" for k in range(100)]
    make_imagefolder(root / "train", dict.fromkeys(classes, train), size=size, seed=0)
    make_imagefolder(root / "val", dict.fromkeys(classes, val), size=size, seed=1)
    return root


def overlay(workdir: Path, name: str, text: str) -> str:
    path = workdir / name
    path.write_text(text)
    return str(path)


def pixel_variant() -> str:
    """The config's commented pixels + timm block, uncommented."""
    text = CONFIG.read_text()
    block = text[text.index("# run: imagenet100-pixels") :]
    return "\n".join(line[2:] for line in block.splitlines() if line.startswith("# "))


def test_dry_run_scatters_32_parts_and_chains_10_tasks(workdir, tmp_path):
    images = imagenet_layout(tmp_path / "in100", train=2, val=1)
    source = overlay(workdir, "source.yaml", f"shard: {{source: 'imagefolder:{images}'}}\n")
    counts = job_counts(snakemake(workdir, "-n", "--configfile", "config/imagenet100.yaml", source).stdout)
    assert counts["shard_part"] == 32 and counts["tokenize_part"] == 32
    assert counts["train"] == 10 and counts["evaluate"] == 10
    for rule in ("shard", "tokenizer", "tokenize", "synonyms", "split", "package"):
        assert counts[rule] == 1, rule
    assert "pretrain" not in counts


def test_the_commented_pixel_variant_plans_a_timm_start(workdir, tmp_path):
    images = imagenet_layout(tmp_path / "in100", train=2, val=1)
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")  # a dry run only needs the path
    text = pixel_variant().replace("/models/vit_base_patch16_224/model.safetensors", str(checkpoint))
    variant = overlay(workdir, "pixels.yaml", text + f"\nshard: {{image_size: 224, source: 'imagefolder:{images}'}}\n")
    out = snakemake(workdir, "-n", "-p", "--configfile", "config/imagenet100.yaml", variant).stdout
    counts = job_counts(out)
    assert counts["pretrain"] == 1 and counts["train"] == 10
    assert f"--mode timm --timm-model vit_base_patch16_224 --timm-checkpoint {checkpoint}" in out
    assert "--init results/imagenet100-pixels/pretrain" in out and "--input pixels" in out


SHRUNK = """
run: in100-small
threads: 2
shard: {{source: 'imagefolder:{images}', image_size: 64, max_per_class: 4, shard_size: 100, parts: 4}}
tokenizer: {{codebook_size: 16, code_dim: 4, hidden_dim: 8, epochs: 1, batch_size: 64, max_images: 200}}
train: {{epochs: 1, batch_size: 16, embed_dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0, gpus: 0, precision: fp32}}
memory: {{budget: "100%"}}  # 1% of 400 tiny images cannot hold one sample of each class
synonyms: {{k: 2}}
"""


@pytest.mark.slow
def test_a_shrunk_run_reaches_task_0(workdir, tmp_path):
    """The config as it is, but 4 train + 4 val images per class at 64 px (4x4 grids at downsample 16), a tiny
    tokenizer and ViT, 4 parts and no GPU: shard and tokenize scatter and gather, task 0 trains its coretokenset
    (gradient coreset, AtMan tokens, token input dropout, epoch replay) and evaluates."""
    images = imagenet_layout(tmp_path / "in100", train=5, val=5, size=(72, 72))
    small = overlay(workdir, "small.yaml", SHRUNK.format(images=images))
    snakemake(workdir, "task_0", "--configfile", "config/imagenet100.yaml", small)
    run = workdir / "results" / "in100-small"
    shard = json.loads((run / "shard" / "stats.json").read_text())
    assert shard["counts"] == {"train": 400, "test": 400}  # max_per_class 4 per split: val stays the test split
    tokens = json.loads((run / "tokens" / "stats.json").read_text())
    assert tokens["grid"] == [4, 4] and len(tokens["part_resources"]) == 4
    stats = json.loads((run / "train" / "task-0" / "stats.json").read_text())
    assert stats["memory_method"] == "coretokenset" and stats["memory_scorer"] == "atman"
    assert stats["memory_tokens_per_sample"] == 2  # token_fraction 0.1 of 16, rounded up
    row = json.loads((run / "evaluate" / "task-0.json").read_text())
    assert len(row["accuracy"]) == 10 and 0.0 <= row["accuracy"][0] <= 1.0
