"""config/experiments/*.yaml: each laid over config/config.yaml (as `--configfile` does) expands into the variants it
describes, and they share their upstream stages (one dataset and tokenizer; one split per seed)."""

from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from tokenforge.config_schema import read_schema
from tokenforge.experiment import expand_experiment

REPO = Path(__file__).resolve().parents[1]
SCHEMA = read_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")
CONFIGS = sorted((REPO / "config" / "experiments").glob("*.yaml"))

# name: (variants, pretrain folders whose stage runs); every one has 3 seeds sharing one dataset and tokenizer
EXPECTED = {
    "coretokens": (18, 0),
    "coretokens_fashion": (21, 0),
    "coretokens_replays": (36, 0),
    "coretokens_starts": (72, 9),  # 3 pretrainings x 3 seeds: the fill-only start (pretrain.init false) shares mtm-tasks
    "trar_sequence": (12, 0),
    "trar_sequence_fashion": (6, 0),
    "vqa_sequence": (15, 0),
    "vqa_kept_tokens": (9, 0),
    "vqa_memory": (42, 0),
    "captioning_memory": (42, 0),
}


def laid_over_default(path: Path) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load(path.read_text()))
    return config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_experiment_config_expands(path):
    variants = expand_experiment(laid_over_default(path), SCHEMA)
    assert variants, path
    if path.stem not in EXPECTED:
        return
    count, pretrains = EXPECTED[path.stem]
    assert len(variants) == count
    assert variants[0].config["run"] == path.stem  # results/<file name>, as `make run CONFIG=` names it
    assert len({v.roots["data"] for v in variants}) == 1 and len({v.roots["tokens"] for v in variants}) == 1
    assert len({v.roots["split"] for v in variants}) == 3
    assert len({v.roots["pretrain"] for v in variants if v.config["pretrain"]["mode"] != "none"}) == pretrains
    deepspeed = {v.config["train"]["deepspeed_config"] for v in variants}
    assert all((REPO / d).is_file() for d in deepspeed)


def test_coretokens_is_the_benchmarks_setting():
    """The README's Split-digits setting (the earlier benchmarks/coretokens.py's DATASETS["digits"], TRAIN and
    TOKEN_FRACTION), with the CLI defaults where config/config.yaml differs from them."""
    (v, *_) = expand_experiment(laid_over_default(REPO / "config" / "experiments" / "coretokens.yaml"), SCHEMA)
    c = v.config
    assert (c["shard"]["source"], c["shard"]["image_size"], c["data_seed"]) == ("digits", 16, 0)
    assert {k: c["tokenizer"][k] for k in ("codebook_size", "code_dim", "downsample", "epochs")} == {
        "codebook_size": 64, "code_dim": 16, "downsample": 2, "epochs": 20}  # fmt: skip
    keys = ("epochs", "embed_dim", "depth", "num_heads", "batch_size", "lr", "input_dropout")
    train = {k: c["train"][k] for k in keys}
    assert train == {"epochs": 16, "embed_dim": 48, "depth": 2, "num_heads": 4, "batch_size": 16, "lr": 1e-3,
                     "input_dropout": 1.0}  # fmt: skip
    assert (c["memory"]["token_fraction"], c["memory"]["selection"]) == (0.125, "class_balanced")
    clipping = yaml.safe_load((REPO / c["train"]["deepspeed_config"]).read_text()).get("gradient_clipping", 0)
    assert clipping == 0  # `tokenforge train` without --deepspeed-config does not clip
