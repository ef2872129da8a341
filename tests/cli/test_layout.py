"""The package's layout rules (see the architecture issue): short functions, a CLI that imports no torch until a
stage runs, and one source of truth for every choice the config offers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers.pipeline import REPO

SRC = REPO / "src" / "tokenforge"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 450  # a file a reviewer can hold: one concern each (the architecture issue split the larger ones)


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from `def` to its last line) of every function and method in a file, nested ones too."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(), filename=str(path)), "")
    return found


def test_function_lengths_are_measured_from_def_to_last_line(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("@decorator\ndef f():\n    x = 1\n\n    return x\n\n\nclass C:\n    def g(self):\n"
                      "        def h():\n            pass\n        return h\n")
    assert function_lengths(source) == [("f", 4), ("C.g", 4), ("C.g.h", 2)]


def test_no_function_in_src_is_longer_than_60_lines():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10, f"no sources under {SRC}"
    long = [
        f"{path.relative_to(REPO)}:{name}:{length}"
        for path in files
        for name, length in function_lengths(path)
        if length > MAX_FUNCTION_LINES
    ]
    assert not long, f"{len(long)} functions over {MAX_FUNCTION_LINES} lines (file:function:lines):\n" + "\n".join(long)


def test_no_file_in_src_is_longer_than_450_lines():
    long = [f"{path.relative_to(REPO)}:{n}" for path in sorted(SRC.rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES]  # fmt: skip
    assert not long, f"{len(long)} files over {MAX_FILE_LINES} lines (file:lines):\n" + "\n".join(long)


# Each runs in a fresh interpreter; on failure it names the tokenforge modules that were loaded.
NO_TORCH = """
import sys
{code}
loaded = sorted(m for m in sys.modules if m.startswith("tokenforge"))
assert "torch" not in sys.modules, "torch was imported; tokenforge modules loaded: " + ", ".join(loaded)
"""


@pytest.mark.parametrize(
    "code",
    [
        "import tokenforge.cli",
        "from tokenforge.cli import build_parser\nbuild_parser()",
        "from tokenforge.cli import build_parser\ntry:\n    build_parser().parse_args(['train', '--help'])\n"
        "except SystemExit:\n    pass",
    ],
    ids=["import", "build_parser", "train-help"],
)
def test_the_cli_parser_keeps_torch_out(code):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH.format(code=code)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _schema_enum(dotted: str) -> list:
    section, key = dotted.split(".")
    schema = yaml.safe_load(SCHEMA.read_text())
    return schema["properties"][section]["properties"][key]["enum"]


@pytest.mark.parametrize(
    "key, registry",
    [
        ("family", "tokenforge.families.FAMILIES"),
        ("memory.method", "tokenforge.continual.METHODS"),
        ("memory.selection", "tokenforge.continual.SELECTIONS"),
        ("memory.scorer", "tokenforge.continual.SCORERS"),
        ("memory.fill", "tokenforge.continual.FILLS"),
    ],
)
def test_every_pluggable_config_key_takes_its_choices_from_its_registry(key, registry):
    """The schema names the registry (x-registry), whose names (plus import paths) are what a config may say."""
    from tokenforge.config_schema import expanded

    node = yaml.safe_load(SCHEMA.read_text())
    full = expanded(SCHEMA)
    for part in key.split("."):
        node, full = node["properties"][part], full["properties"][part]
    module, _, name = registry.rpartition(".")
    assert node["x-registry"] == f"{module}:{name}"
    assert full["anyOf"][0]["enum"] == list(_constant(registry))


def _constant(dotted: str):
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(
    "key, constant",
    [
        ("memory.view", "tokenforge.continual.VIEWS"),
        ("memory.schedule", "tokenforge.continual.SCHEDULES"),
        ("train.input_dropout_mode", "tokenforge.continual.DROPOUT_MODES"),
        ("train.head", "tokenforge.models.HEADS"),
        ("train.input", "tokenforge.models.INPUTS"),
        ("train.attention", "tokenforge.models.ATTENTIONS"),
        ("train.routing", "tokenforge.models.ROUTINGS"),
        ("train.zero_stage", "tokenforge.engine.ZERO_STAGES"),
        ("train.precision", "tokenforge.engine.PRECISIONS"),
        ("train.compile", "tokenforge.engine.COMPILE_MODES"),
        ("train.adamw", "tokenforge.engine.ADAMW_IMPLEMENTATIONS"),
        ("train.launcher", "tokenforge.engine.launch.LAUNCHERS"),
        ("pretrain.mode", "tokenforge.engine.PRETRAIN_MODES"),
        ("mlflow.mode", "tokenforge.tracking.MODES"),
    ],
)
def test_every_config_choice_list_is_the_python_constant(key, constant):
    """The schema's enum (what a config may say) and the constant (what the code accepts) are the same, in order."""
    assert _schema_enum(key) == list(_constant(constant)), f"{SCHEMA.relative_to(REPO)} {key} != {constant}"
