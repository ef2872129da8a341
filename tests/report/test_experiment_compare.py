"""The comparison of an experiment folder (tokenforge.report.experiment), `tokenforge compare` and `tokenforge summary`
on it: a synthetic grid of 2 methods x 2 budgets x 2 seeds with hand-made metrics.json files."""

import csv
import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

from tokenforge import cli
from tokenforge.errors import TokenforgeError
from tokenforge.report import experiment

METHODS = {"coreset": 0.50, "coretokenset": 0.60}  # base accuracy
BUDGETS = {"1%": 1_000, "5%": 5_000}  # memory bytes
SEEDS = (0, 1)


def numbers(method: str, budget: str, seed: int) -> dict:
    """Made-up but consistent headline numbers: more memory, more accuracy; seeds differ a little."""
    accuracy = METHODS[method] + (0.1 if budget == "5%" else 0.0) + 0.013 * seed
    forgetting = 0.4 - (accuracy - 0.5) / 2 + 0.007 * seed
    return {"final_average_accuracy": accuracy, "average_forgetting": forgetting, "backward_transfer": -forgetting,
            "memory": BUDGETS[budget] + 17 * seed, "total": 30.0 + 2.5 * seed + (5 if method == "coretokenset" else 0)}


def metrics_json(n: dict, method: str) -> dict:
    return {
        "num_tasks": 2,
        "accuracy_matrix": [[0.9, 0.0], [n["final_average_accuracy"], n["final_average_accuracy"]]],
        "final_average_accuracy": n["final_average_accuracy"],
        "average_forgetting": n["average_forgetting"],
        "backward_transfer": n["backward_transfer"],
        "memory": {"method": method, "budget_bytes": n["memory"] + 10, "samples": 10, "tokens_per_sample": 8},
        "bytes": {"memory": n["memory"], "memory_per_task": [n["memory"] // 2, n["memory"]], "dataset_tokens": 24388},
        "wall_time_s": {"train-0": n["total"] / 2, "train-1": n["total"] / 2, "total": n["total"]},
    }


def variant(method: str, budget: str, seed: int, family: str = "classification") -> dict:
    group = f"method-{method}_budget-{budget}"
    return {"name": f"{group}_seed-{seed}", "dir": f"runs/{group}_seed-{seed}", "group": group, "seed": seed,
            "params": {"memory.method": method, "memory.budget": budget, "seed": seed}, "family": family}


def make_experiment(folder: Path) -> Path:
    variants = [variant(m, b, s) for m in METHODS for b in BUDGETS for s in SEEDS]
    for v in variants:
        p = v["params"]
        metrics = metrics_json(numbers(p["memory.method"], p["memory.budget"], p["seed"]), p["memory.method"])
        (folder / v["dir"] / "package").mkdir(parents=True)
        (folder / v["dir"] / "package" / "metrics.json").write_text(json.dumps(metrics))
    axes = ["memory.method", "memory.budget", "seed"]
    (folder / "experiment.json").write_text(json.dumps({"experiment": "coretokens", "axes": axes, "variants": variants}))
    return folder


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_experiment(tmp_path / "coretokens")


@pytest.fixture
def tokenforge(monkeypatch):
    # Only the subcommands tested here: the other stages need not import.
    monkeypatch.setattr(cli, "STAGES", ("compare", "summary"))
    return cli.main


def expected(method: str, budget: str, key: str, seeds=SEEDS) -> tuple[float, float | None]:
    values = [numbers(method, budget, s)[key] for s in seeds]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def pct(mean: float, std: float | None) -> str:
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def group_of(comp: dict, method: str, budget: str) -> dict:
    return next(g for g in comp["groups"] if g["group"] == f"method-{method}_budget-{budget}")


def test_groups_are_mean_and_std_over_seeds(folder):
    comp = experiment.comparison(folder)
    assert [g["group"] for g in comp["groups"]] == [f"method-{m}_budget-{b}" for m in METHODS for b in BUDGETS]
    assert len(comp["variants"]) == 8 and all(v["status"] == "finished" for v in comp["variants"])
    for method in METHODS:
        for budget in BUDGETS:
            g = group_of(comp, method, budget)
            assert g["params"] == {"memory.method": method, "memory.budget": budget}
            assert (g["n"], g["variants"], g["seeds"]) == (2, 2, [0, 1])
            for name, key in [("final_average_accuracy", "final_average_accuracy"), ("backward_transfer",
                              "backward_transfer"), ("memory_bytes", "memory"), ("total_wall_s", "total")]:  # fmt: skip
                mean, std = expected(method, budget, key)
                assert g["mean"][name] == pytest.approx(mean, rel=1e-12)
                assert g["std"][name] == pytest.approx(std, rel=1e-12)
    text = experiment.text_table(comp)
    header, first = text.splitlines()[:2]
    assert header.split()[:4] == ["method", "budget", "n", "accuracy"]
    assert pct(*expected("coreset", "1%", "final_average_accuracy")) in first
    assert pct(*expected("coreset", "1%", "average_forgetting")) in first
    mean, std = expected("coreset", "1%", "memory")
    assert f"{mean:,.0f} ± {std:,.0f}" in first


def test_a_missing_variant_is_a_dash_and_left_out(folder):
    (folder / "runs/method-coreset_budget-5%_seed-1/package/metrics.json").unlink()
    for seed in SEEDS:  # a whole group not finished
        (folder / f"runs/method-coretokenset_budget-1%_seed-{seed}/package/metrics.json").unlink()
    (folder / "runs/method-coreset_budget-1%_seed-1/package/metrics.json").write_text("{broken")
    comp = experiment.comparison(folder)
    statuses = {v["name"]: v["status"] for v in comp["variants"]}
    assert statuses["method-coreset_budget-5%_seed-1"] == "missing"
    assert statuses["method-coreset_budget-1%_seed-1"] == "unreadable"
    one = group_of(comp, "coreset", "5%")
    assert (one["n"], one["variants"], one["std"]["final_average_accuracy"]) == (1, 2, None)
    assert one["mean"]["final_average_accuracy"] == numbers("coreset", "5%", 0)["final_average_accuracy"]
    assert group_of(comp, "coretokenset", "1%")["mean"]["final_average_accuracy"] is None
    lines = {line.split()[0] + line.split()[1]: line for line in experiment.text_table(comp).splitlines()[1:]}
    assert " 1/2 " in lines["coreset5%"] and pct(numbers("coreset", "5%", 0)["final_average_accuracy"], None) in lines["coreset5%"]
    assert lines["coretokenset1%"].split()[2:] == ["0/2", "-", "-", "-", "-", "-"]
    assert experiment.status_line(comp).startswith("experiment coretokens: 8 variants, 4 finished; not finished: ")
    comp = experiment.write_comparison(folder, folder)  # every file, despite the gaps
    rows = {r["name"]: r for r in csv.DictReader((folder / "variants.csv").open())}
    assert rows["method-coreset_budget-5%_seed-1"]["final_average_accuracy"] == ""
    assert "| coretokenset | 1% | 0/2 | - |" in (folder / "comparison.md").read_text()


def test_compare_writes_every_file_quietly(folder, tokenforge, capsys, tmp_path):
    out = tmp_path / "out"
    assert tokenforge(["compare", str(folder), "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out == ""
    for name in ("comparison.csv", "variants.csv", "comparison.md", "comparison.json", "accuracy_vs_bytes.png",
                 "report.html"):  # fmt: skip
        assert (out / name).is_file(), name
    with Image.open(out / "accuracy_vs_bytes.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100
    groups = list(csv.DictReader((out / "comparison.csv").open()))
    assert len(groups) == 4 and groups[0]["memory.method"] == "coreset" and groups[0]["n"] == "2"
    mean, std = expected("coreset", "1%", "final_average_accuracy")
    assert float(groups[0]["final_average_accuracy_mean"]) == pytest.approx(mean, rel=1e-12)
    assert float(groups[0]["final_average_accuracy_std"]) == pytest.approx(std, rel=1e-12)
    assert len(list(csv.DictReader((out / "variants.csv").open()))) == 8
    md = (out / "comparison.md").read_text()
    assert "| method | budget | n | accuracy (%) |" in md and pct(mean, std) in md
    assert len(json.loads((out / "comparison.json").read_text())["groups"]) == 4
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and pct(mean, std) in page and "src=\"http" not in page


def test_compare_prints_the_table(folder, tokenforge, capsys, tmp_path):
    assert tokenforge(["compare", str(folder), "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("experiment coretokens: 8 variants, 8 finished")
    assert pct(*expected("coretokenset", "5%", "final_average_accuracy")) in out
    assert len(list(csv.DictReader((tmp_path / "c.csv").open()))) == 4


def test_summary_of_an_experiment(folder, tokenforge, capsys):
    assert tokenforge(["summary", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"tokenforge experiment coretokens: 8 variants, 8 finished in {folder.resolve()}" in out
    assert pct(*expected("coreset", "5%", "final_average_accuracy")) in out
    assert f"report.html:            {folder.resolve() / 'report.html'} (not written yet)" in out
    assert f"tokenforge compare {folder.resolve()} --out {folder.resolve()}" in out
    experiment.write_comparison(folder, folder)
    assert tokenforge(["summary", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "not written yet" not in out and str(folder.resolve() / "accuracy_vs_bytes.png") in out
    assert tokenforge(["summary", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["experiment"] == "coretokens"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"experiment": "e"}), "'variants' must be a list"),
        (json.dumps({"experiment": "e", "variants": [{"name": "a"}]}), "variants[0] needs 'name', 'dir' and 'group'"),
    ],
)
def test_a_bad_experiment_json_is_one_line(tmp_path, tokenforge, capsys, text, message):
    (tmp_path / "experiment.json").write_text(text)
    for command in ("compare", "summary"):
        assert tokenforge([command, str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "experiment.json" in err and message in err, err
    with pytest.raises(TokenforgeError, match="not found"):
        experiment.load_experiment(tmp_path / "nowhere")


def test_out_needs_one_experiment(folder, tokenforge, capsys, tmp_path):
    other = make_experiment(tmp_path / "other")
    assert tokenforge(["compare", str(folder), str(other), "--out", str(tmp_path / "o")]) == 2
    assert "--out DIR: give one experiment folder, got 2" in capsys.readouterr().err
    assert tokenforge(["compare", str(folder), str(other)]) == 0
    assert capsys.readouterr().out.count("experiment coretokens: 8 variants") == 2


def test_plot_lines_and_text_families(tmp_path):
    """Lines are the params but the budget (a scorer splits a method); no memory (0 bytes) is a reference line;
    captioning's CIDEr-D is no share: its columns are plain numbers."""
    groups = [
        {"params": {"memory.method": "none", "memory.budget": "0"}, "m": (0, 0.3, None)},
        {"params": {"memory.method": "coretokenset", "memory.budget": "1%", "memory.scorer": "a"}, "m": (10, 0.5, 0.1)},
        {"params": {"memory.method": "coretokenset", "memory.budget": "5%", "memory.scorer": "a"}, "m": (5e4, 0.6, None)},
        {"params": {"memory.method": "coretokenset", "memory.budget": "1%", "memory.scorer": "b"}, "m": (12, 0.4, 0.0)},
    ]  # fmt: skip
    groups = [{"group": str(i), "params": g["params"], "n": 1, "variants": 1, "metric": "accuracy",
               "mean": {"memory_bytes": g["m"][0], "final_average_accuracy": g["m"][1]},
               "std": {"final_average_accuracy": g["m"][2]}} for i, g in enumerate(groups)]  # fmt: skip
    assert experiment.plot_lines(groups) == {
        "none": [(0, 0.3, 0.0)],
        "coretokenset scorer=a": [(10, 0.5, 0.1), (5e4, 0.6, 0.0)],
        "coretokenset scorer=b": [(12, 0.4, 0.0)],
    }
    figure = experiment.accuracy_vs_bytes_figure({"experiment": "e", "groups": groups})
    assert figure.axes[0].get_xscale() == "log"
    folder = tmp_path / "cap"
    v = variant("coreset", "1%", 0, family="captioning")
    (folder / v["dir"] / "package").mkdir(parents=True)
    result = {**metrics_json(numbers("coreset", "1%", 0), "coreset"), "final_average_accuracy": 1.25, "metric": "cider",
              "score_matrices": {"cider": {"final_average_accuracy": 1.25}, "bleu4": {"final_average_accuracy": 0.2}}}
    (folder / v["dir"] / "package" / "metrics.json").write_text(json.dumps(result))
    (folder / "experiment.json").write_text(json.dumps({"experiment": "cap", "variants": [v]}))
    comp = experiment.write_comparison(folder, folder)
    assert comp["variants"][0]["scores"] == {"bleu4": 0.2, "cider": 1.25}
    header, row = experiment.text_table(comp).splitlines()
    assert header.endswith("bleu4 (%)  cider") and "accuracy" in header and "accuracy (%)" not in header
    assert row.split()[-2:] == ["20.00", "1.250"] and "1.250 cider" in row


def test_named_object_columns_when_a_variant_has_them(tmp_path):
    """VQA on scenes: metrics.json's memory holds the share of the kept tokens on the named objects and those objects'
    area; each is a column (%, mean ± std over seeds) after the scores, "-" for a group without it."""
    folder = tmp_path / "vqa"
    variants = [variant(m, "1%", s, family="vqa") for m in ("coreset", "coretokenset") for s in SEEDS]
    shares = {("coretokenset", 0): (0.5, 0.2), ("coretokenset", 1): (0.7, 0.25)}
    for v in variants:
        method, seed = v["params"]["memory.method"], v["seed"]
        result = {**metrics_json(numbers(method, "1%", seed), method), "metric": "vqa_accuracy",
                  "score_matrices": {"vqa_accuracy": {"final_average_accuracy": 0.6}}}  # fmt: skip
        if (method, seed) in shares:
            result["memory"].update(zip(("named_object_share", "named_object_area"), shares[method, seed]))
        (folder / v["dir"] / "package").mkdir(parents=True)
        (folder / v["dir"] / "package" / "metrics.json").write_text(json.dumps(result))
    (folder / "experiment.json").write_text(json.dumps({"experiment": "vqa", "variants": variants}))
    comp = experiment.write_comparison(folder, folder)
    assert comp["variants"][2]["scores"] == {"vqa_accuracy": 0.6, "named_object_share": 0.5, "named_object_area": 0.2}
    assert comp["variants"][0]["scores"] == {"vqa_accuracy": 0.6}
    header, (coreset, tokens), _ = experiment.table_cells(comp)
    assert header[-3:] == ["vqa_accuracy (%)", "named-object share (%)", "named-object area (%)"]
    assert coreset[-2:] == ["-", "-"]
    assert tokens[-2:] == [pct(0.6, statistics.stdev([0.5, 0.7])), pct(0.225, statistics.stdev([0.2, 0.25]))]
    groups = {r["group"]: r for r in csv.DictReader((folder / "comparison.csv").open())}
    assert float(groups["method-coretokenset_budget-1%"]["named_object_share_mean"]) == pytest.approx(0.6)
    assert list(csv.DictReader((folder / "variants.csv").open()))[2]["named_object_area"] == "0.2"
