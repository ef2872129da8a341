"""tokenforge.experiment: a grid expanded into named variants, the stage folders they share, and bad grids."""

from pathlib import Path

import pytest
import yaml

from tokenforge.config_schema import read_schema
from tokenforge.errors import TokenforgeError
from tokenforge.experiment import describe, expand_experiment

REPO = Path(__file__).resolve().parents[1]
SCHEMA = read_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")


def base(**experiment) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["run"] = "exp"
    if experiment:
        config["experiment"] = experiment
    return config


def names(variants) -> list[str]:
    return [v.name for v in variants]


def test_a_config_without_a_grid_is_one_variant_in_the_runs_own_folder():
    (v,) = expand_experiment(base(), SCHEMA)
    assert v.name == "exp" and v.params == {}
    assert set(v.roots.values()) == {"exp"}


def test_the_grid_is_the_product_of_its_axes_with_readable_names():
    variants = expand_experiment(base(grid={"memory.method": ["none", "coreset"], "seed": [0, 1]}), SCHEMA)
    assert names(variants) == ["none_s0", "none_s1", "coreset_s0", "coreset_s1"]
    assert variants[3].config["memory"]["method"] == "coreset" and variants[3].config["seed"] == 1
    assert variants[3].group == "coreset"
    assert variants[0].roots["run"] == "exp/runs/none_s0"


def test_variants_share_every_stage_whose_settings_agree():
    grid = {"memory.method": ["none", "coreset"], "seed": [0, 1]}
    variants = expand_experiment(base(grid=grid, **{}) | {"data_seed": 0}, SCHEMA)
    by = {v.name: v for v in variants}
    # data and tokens: one folder for all (data_seed fixed); split: one per seed, shared by both methods
    assert len({v.roots["data"] for v in variants}) == 1
    assert len({v.roots["tokens"] for v in variants}) == 1
    assert by["none_s0"].roots["split"] == by["coreset_s0"].roots["split"] != by["none_s1"].roots["split"]
    assert len({v.roots["run"] for v in variants}) == 4


def test_without_a_data_seed_each_seed_has_its_own_data_and_a_tokenizer_setting_its_own_tokens():
    variants = expand_experiment(base(grid={"seed": [0, 1], "tokenizer.codebook_size": [32, 64]}), SCHEMA)
    assert len({v.roots["data"] for v in variants}) == 2  # the shard's split follows the seed
    assert len({v.roots["tokens"] for v in variants}) == 4


def test_a_section_axis_sets_settings_together_and_exclude_include_shape_the_grid():
    experiment = {
        "grid": {"memory": [{"method": "coreset"}, {"method": "coretokenset", "scorer": "chefer"}],
                 "memory.budget": ["2%", "5%"]},
        "exclude": [{"memory.method": "coreset", "memory.budget": "5%"}],
        "include": [{"memory.method": "none"}],
    }
    variants = expand_experiment(base(**experiment), SCHEMA)
    assert names(variants) == ["coreset_2%", "coretokenset_chefer_2%", "coretokenset_chefer_5%", "none_2%", "none_5%"]
    assert variants[1].params == {"memory.method": "coretokenset", "memory.scorer": "chefer", "memory.budget": "2%"}


def test_a_name_template_and_experiment_json():
    variants = expand_experiment(base(grid={"memory.method": ["none", "coreset"]}, name="m-{memory.method}-{seed}"), SCHEMA)
    assert names(variants) == ["m-none-0", "m-coreset-0"]
    described = describe(variants, "exp")
    assert described["axes"] == ["memory.method"]
    assert described["variants"][1]["dir"] == "runs/m-coreset-0" and described["variants"][1]["params"] == {"memory.method": "coreset"}


@pytest.mark.parametrize(
    "experiment, message",
    [
        ({"grid": {"memory.methd": ["none"]}}, "experiment.grid key memory.methd: not a config key"),
        ({"grid": {"trian.epochs": [1, 2]}}, "experiment.grid key trian.epochs: not a config key"),
        ({"grid": {"seed": []}}, "experiment.grid key seed: no values"),
        ({"grid": {"seed": 1}}, "experiment.grid key seed: expected a list"),
        ({"grid": {"seed": [0]}, "exclude": [{"seed": 0}]}, "experiment: the grid is empty"),
        ({"grid": {"seed": [0, 1]}, "name": "same"}, "experiment.name: two variants named same"),
        ({"grid": {"threads": [1, 2]}}, "experiment key threads: the same for every variant"),
        ({"grid": {"seed": [0, 1]}, "include": [{"memory.scorr": "x"}]}, "experiment.include key memory.scorr"),
    ],
)
def test_bad_grids_are_one_line_errors_naming_the_key(experiment, message):
    with pytest.raises(TokenforgeError) as err:
        expand_experiment(base(**experiment), SCHEMA)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_value_the_schema_refuses_names_the_variant_and_key():
    def validate(config, name):
        if config["train"]["epochs"] < 1:
            raise TokenforgeError(f"experiment variant {name}: config key train.epochs: {config['train']['epochs']} < 1")
        return config

    with pytest.raises(TokenforgeError, match="experiment variant epochs0: config key train.epochs"):
        expand_experiment(base(grid={"train.epochs": [2, 0]}), SCHEMA, validate)


def test_a_fill_only_start_shares_the_pretraining_and_other_pretrain_settings_do_not():
    grid = {"pretrain.init": [True, False], "pretrain.epochs": [5, 10]}
    variants = expand_experiment(base(grid=grid) | {"pretrain": {"mode": "mtm", "data": "tasks"}}, SCHEMA)
    folders = {(v.params["pretrain.init"], v.params["pretrain.epochs"]): v.roots["pretrain"] for v in variants}
    assert folders[(True, 5)] == folders[(False, 5)] != folders[(True, 10)] == folders[(False, 10)]
    assert len({v.roots["split"] for v in variants}) == 1
