"""The families registry (tokenforge.families.FAMILIES): built-in names, the CLI's choices, one-line errors, and a
family of one's own by import path driving `tokenforge split` and `evaluate` without touching tokenforge."""

import json
import textwrap

import pytest

from tokenforge import families
from tokenforge.cli import main
from tokenforge.errors import TokenforgeError
from tokenforge.families import FAMILIES


def test_the_built_in_families_and_get():
    assert FAMILIES.builtin_names() == ("classification", "vqa", "captioning")
    assert families.get("vqa", by="dataset").by == "dataset"
    assert families.get("classification", num_classes=3, seen=[0, 1]).seen == [0, 1]
    assert FAMILIES.load("tokenforge.families.multimodal:Captioning") is FAMILIES.load("captioning")


def test_unknown_or_wrong_families_are_one_line_errors(capsys):
    with pytest.raises(TokenforgeError, match="family: unknown family 'chat'; expected one of classification, vqa"):
        FAMILIES.load("chat")
    with pytest.raises(TokenforgeError, match="is not a family: it is a class without split, training_job, evaluate"):
        FAMILIES.load("tokenforge.errors:TokenforgeError")
    with pytest.raises(SystemExit):
        main(["train", "--family", "chat", "--tokenizer", "t", "--split", "s", "--task", "0", "--out", "o"])
    assert "invalid choice: 'chat'" in capsys.readouterr().err


TOY = '''
    """A family of one's own: the tasks learn the letters of a word."""
    from tokenforge.families import SplitPlan


    class Letters:
        def __init__(self, **kwargs):
            pass

        @classmethod
        def split(cls, args):
            return SplitPlan(list("abcd"), fields={"family": "toyfam:Letters", "word": "abcd"})

        @classmethod
        def training_job(cls, args, tracker):
            raise NotImplementedError

        @classmethod
        def evaluate(cls, args, tracker):
            row = {"task": args.task, "accuracy": [1.0, 0.5]}
            return row, {"letters": (row["accuracy"], 0.75)}

        @classmethod
        def sequence_mask(cls, manifest, labels):
            return None
'''


def test_a_family_of_ones_own_by_import_path_splits_and_evaluates(tmp_path, monkeypatch):
    (tmp_path / "toyfam.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["split", "--family", "toyfam:Letters", "--out", str(tmp_path / "split"), "--tasks", "2", "-q"]) == 0
    manifest = json.loads((tmp_path / "split" / "tasks.json").read_text())
    assert manifest["word"] == "abcd" and manifest["num_classes"] == 4 and len(manifest["tasks"]) == 2
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--family", "toyfam:Letters", "--model", str(tmp_path), "--split", str(tmp_path / "split"),
                 "--task", "1", "--out", str(out), "-q"]) == 0  # fmt: skip
    assert json.loads(out.read_text())["accuracy"] == [1.0, 0.5]


def test_the_pipeline_hands_a_family_of_ones_own_to_every_stage(workdir):
    """A dry run of the Snakefile with `family: toyfam:Letters`: split, train and evaluate get --family, the split
    reads class names (the family does not say reads_text), and nothing branches on the family's name."""
    import subprocess

    from helpers.pipeline import pipeline_env, snakemake_command, write_config

    (workdir / "toyfam.py").write_text(textwrap.dedent(TOY))
    cfg = write_config(workdir, 'family: "toyfam:Letters"\nsplit: {tasks: 2, classes_per_task: 2}\n')
    proc = subprocess.run(snakemake_command(workdir, "--configfile", cfg, "-n", "-p"), capture_output=True, text=True,
                          env=pipeline_env(PYTHONPATH=str(workdir)))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    commands = [line for line in proc.stdout.splitlines() if " -m tokenforge " in line]
    for stage in ("split", "train", "evaluate"):
        lines = [c for c in commands if f" -m tokenforge {stage} " in c]
        assert lines and all("--family toyfam:Letters" in c for c in lines), (stage, lines[:1])
    assert all("--classes " in c for c in commands if " -m tokenforge split " in c)
