"""Registries and plugins (tokenforge/plugins.py): names, import paths, entry points, one-line errors, the schema and
CLI choices derived from them, and the example plugin package run through the real pipeline from outside the tree."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers.pipeline import REPO, TINY, pipeline_env, snakemake_command, write_config

from tokenforge.errors import TokenforgeError
from tokenforge.plugins import Registry

EXAMPLE = REPO / "examples" / "tokenforge-example-plugin"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of one's own on sys.path: a function, a non-callable, and a memory method object."""
    (tmp_path / "mylab_user.py").write_text(
        "from tokenforge.continual.methods import MemoryMethod\n"
        "def fn(*args, **kwargs):\n    return 'called'\n"
        "NOT_CALLABLE = 3\n"
        "HALF = MemoryMethod()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mylab_user"
    sys.modules.pop("mylab_user", None)


def test_a_registry_lists_names_and_loads_builtins_lazily():
    reg = Registry("widget", key="x.widget", group="tokenforge.test-widgets")
    reg.register("json", "json:dumps")
    assert list(reg) == ["json"] and "json" in reg and len(reg) == 1
    assert "nope" not in reg and "pkg.mod:attr" in reg  # an import path is accepted, checked when loaded
    assert reg.load("json") is json.dumps


@pytest.mark.parametrize(
    "value, message",
    [
        ("nope", r"x\.widget: unknown widget 'nope'; expected one of json or an import path"),
        ("no_such_module_xyz:f", r"x\.widget: cannot import module 'no_such_module_xyz' of 'no_such_module_xyz:f'"),
        ("json:no_such_attr", r"x\.widget: module 'json' has no attribute 'no_such_attr' \(from 'json:no_such_attr'\)"),
        ("mylab_user:NOT_CALLABLE", r"x\.widget: 'mylab_user:NOT_CALLABLE' is not a widget: it is a int, not a callable"),
    ],
)
def test_bad_plugin_paths_are_one_line_errors_naming_key_and_path(user_module, value, message):
    reg = Registry("widget", key="x.widget", group="tokenforge.test-widgets")
    reg.register("json", "json:dumps")
    with pytest.raises(TokenforgeError, match=message) as err:
        reg.load(value)
    assert "\n" not in str(err.value)


def test_every_kind_takes_ones_own_code_by_import_path(user_module):
    from tokenforge.continual import METHODS, SCORERS, SELECTIONS
    from tokenforge.continual.methods import memory_method
    from tokenforge.families import FAMILIES

    assert SCORERS.load("mylab_user:fn")(None) == "called"
    assert SELECTIONS.load("mylab_user:fn")() == "called"
    with pytest.raises(TokenforgeError, match=r"^family: 'mylab_user:fn' is not a family"):
        FAMILIES.load("mylab_user:fn")  # a family is a class
    assert memory_method("mylab_user:HALF").keeps_memory
    with pytest.raises(TokenforgeError, match=r"memory\.method: 'mylab_user:fn' is not a method"):
        METHODS.load("mylab_user:fn")


def test_a_method_of_ones_own_sets_the_tokens_per_sample(user_module, tmp_path):
    from tokenforge.continual.policy import Policy

    sys.path.insert(0, str(EXAMPLE / "src"))
    try:
        policy = Policy(method="mylab_plugin.methods:SQRT_TOKENS", budget=1000, num_positions=16)
    finally:
        sys.path.remove(str(EXAMPLE / "src"))
    assert policy.keeps_memory and policy.tokens == 4
    assert Policy(method="mylab_user:HALF", budget=1000, num_positions=16).tokens == 16


def test_the_example_scorer_by_import_path_scores_a_vit(monkeypatch):
    import torch

    from tokenforge.continual.scorers import token_scores
    from tokenforge.models.vit import ModelConfig, TokenViT

    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    torch.manual_seed(0)
    cfg = ModelConfig(grid=(4, 4), codebook_size=16, code_dim=8, num_classes=3, embed_dim=16, depth=1, num_heads=2)
    model = TokenViT(cfg, torch.randn(16, 8)).eval()
    units = np.random.default_rng(0).integers(0, 16, (5, 4, 4))
    scores = token_scores(model, units, np.array([0, 1, 2, 0, 1]), "mylab_plugin.saliency:score", seed=0, batch_size=2)
    assert scores.shape == (5, 16) and torch.isfinite(scores).all() and (scores >= 0).all()
    assert not any(p.grad is not None for p in model.parameters())
    again = token_scores(model, units, np.array([0, 1, 2, 0, 1]), "mylab_plugin.saliency:score", seed=1, batch_size=5)
    assert torch.allclose(scores, again, atol=1e-6)  # per-sample gradients: batching does not change them


def test_schema_choices_come_from_the_registries():
    from tokenforge.config_schema import expanded
    from tokenforge.continual import METHODS, SCORERS, SELECTIONS
    from tokenforge.families import FAMILIES

    schema = expanded(REPO / "workflow" / "schemas" / "config.schema.yaml")
    memory = schema["properties"]["memory"]["properties"]
    for key, registry in (("method", METHODS), ("selection", SELECTIONS), ("scorer", SCORERS)):
        assert memory[key]["anyOf"][0]["enum"] == list(registry.names())
        assert memory[key]["default"] in registry.builtin_names()
    assert schema["properties"]["family"]["anyOf"][0]["enum"] == list(FAMILIES.names())
    raw = (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()
    assert "rollout" not in raw and "coretokenset, joint" not in raw  # the lists are not written again there


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """The example plugin package pip-installed from a copy outside the source tree into its own site folder."""
    root = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, root / "src-copy")
    site = root / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(root / "src-copy")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return site


def test_an_installed_plugins_entry_points_are_names_in_the_registries(installed_plugin):
    code = (
        "from tokenforge.continual import METHODS, SCORERS\n"
        "from tokenforge.continual.methods import memory_method\n"
        "assert 'saliency' in SCORERS.plugin_names() and 'saliency' in list(SCORERS), list(SCORERS)\n"
        "assert 'sqrt_tokens' in METHODS.names()\n"
        "assert memory_method('sqrt_tokens').tokens_per_sample(196, 0.5) == 14\n"
        "from tokenforge.models import MODEL_OPTIONS\n"
        "assert 'adapters' in MODEL_OPTIONS.plugin_names()\n"
    )
    env = {**pipeline_env(), "PYTHONPATH": str(installed_plugin)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    help_text = subprocess.run([sys.executable, "-m", "tokenforge", "train", "--help"], capture_output=True, text=True,
                               env=env, timeout=120).stdout  # fmt: skip
    assert "saliency" in help_text and "sqrt_tokens" in help_text


@pytest.mark.slow
def test_the_tiny_pipeline_runs_with_the_installed_plugin(installed_plugin, workdir):
    config = yaml.safe_load(TINY)
    config["memory"].update(method="sqrt_tokens", scorer="saliency")
    config["train"]["model_options"] = {"adapters": {"width": 4}}
    cfg = write_config(workdir, yaml.safe_dump(config))
    env = pipeline_env(PYTHONPATH=str(installed_plugin))
    proc = subprocess.run(snakemake_command(workdir, "--configfile", cfg), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    run = workdir / "results" / "tiny"
    for t in (0, 1):
        stats = json.loads((run / "train" / f"task-{t}" / "stats.json").read_text())
        assert stats["memory_method"] == "sqrt_tokens" and stats["memory_tokens_per_sample"] == 4  # sqrt(16)
        assert 0 < stats["memory_bytes"] <= stats["memory_budget_bytes"]
        saved = json.loads((run / "train" / f"task-{t}" / "model.json").read_text())
        assert saved["extra_options"] == {"adapters": {"width": 4}}  # task 0 set it, task 1 kept it
    assert (run / "package" / "metrics.json").is_file()


def test_an_unknown_plugin_name_in_the_config_is_rejected_before_any_job(workdir):
    cfg = write_config(workdir, "memory: {scorer: saliency_not_installed}\n")
    proc = subprocess.run(snakemake_command(workdir, "--configfile", cfg, "-n"), capture_output=True, text=True,
                          env=pipeline_env())  # fmt: skip
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config key memory.scorer: unknown scorer 'saliency_not_installed'; expected one of rollout" in out
    assert not (workdir / "results").exists()


def test_model_options_are_one_module_each_behind_one_interface():
    from tokenforge.cli import build_parser
    from tokenforge.models import MODEL_OPTIONS
    from tokenforge.models.options.base import ModelOption, model_options

    assert MODEL_OPTIONS.builtin_names() == ("routed_attention", "prompts", "token_expansion", "extra_options")
    assert all(isinstance(option, ModelOption) for option in model_options())
    args, _ = build_parser().parse_known_args(["train", "--tokenizer", "t", "--split", "s", "--task", "0", "--out", "o"])
    assert args.attention == "global" and args.prompt_tokens == 0 and args.toe_enabled is False  # each option's flags
    with pytest.raises(TokenforgeError, match=r"^train: 'json:dumps' is not a model option"):
        MODEL_OPTIONS.load("json:dumps")


def test_a_model_option_of_ones_own_is_built_saved_and_rebuilt_on_load(monkeypatch, tmp_path):
    import torch

    from tokenforge.models.store import load_model, save_model
    from tokenforge.models.vit import ModelConfig, TokenViT

    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    torch.manual_seed(0)
    options = {"mylab_plugin.adapters:ADAPTERS": {"width": 4}}
    cfg = ModelConfig(grid=(4, 4), codebook_size=16, code_dim=8, num_classes=3, embed_dim=16, depth=2, num_heads=2,
                      extra_options=options)  # fmt: skip
    model = TokenViT(cfg, torch.randn(16, 8)).eval()
    assert {k for k in model.state_dict() if ".adapter." in k} == {
        f"vit.blocks.{i}.mlp.adapter.{j}.{p}" for i in range(2) for j in (0, 2) for p in ("weight", "bias")}
    units = torch.randint(0, 16, (3, 4, 4))
    plain = TokenViT(ModelConfig(**{**cfg.__dict__, "extra_options": {}}), model.codebook).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".adapter." not in k})
    assert torch.allclose(model(units), plain(units))  # zero-initialised: it starts as the plain ViT
    torch.nn.init.normal_(model.vit.blocks[0].mlp.adapter[2].weight)  # as if trained (a constant shift would be normed away)
    save_model(model, tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["extra_options"] == options
    again = load_model(tmp_path).eval()
    assert torch.equal(again(units), model(units)) and not torch.allclose(again(units), plain(units))
