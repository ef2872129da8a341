"""The docs' benchmark pages: their tables come from benchmarks/results/*.json, never from pasted numbers.

Each page under docs/benchmarks/ is rendered through the hook's functions (docs/hooks/benchmark_tables.py: no
mkdocs, no torch), and cells of every table it shows are parsed back and compared with the JSON, formatted here at
the precision the table shows. Only the last test needs MkDocs (skipped without it).
"""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
import sys

import pytest
from helpers.pipeline import REPO

DOCS = REPO / "docs"
PAGES_DIR = DOCS / "benchmarks"
RESULTS = REPO / "benchmarks" / "results"


def _load_tables():
    spec = importlib.util.spec_from_file_location("benchmark_tables", DOCS / "hooks" / "benchmark_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("benchmark_tables", module)
    spec.loader.exec_module(module)
    return module


bt = _load_tables()
PAGES = sorted(PAGES_DIR.glob("*.md"))


def data(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def tables_of(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table of a text: (header cells, body rows of cells)."""
    out, block = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif block:
            assert len(block) >= 2 and all(set(c) <= set("-:") for c in block[1]), block[:2]
            out.append((block[0], block[2:]))
            block = []
    return out


def only_table(name: str) -> tuple[list[str], list[dict]]:
    """The one table a placeholder renders, its rows as {header: cell}."""
    tables = tables_of(bt.render_table(name, RESULTS))
    assert len(tables) == 1, f"{name}: {len(tables)} tables"
    header, rows = tables[0]
    assert len(set(header)) == len(header), f"{name}: repeated column names, check cells by position"
    return header, [dict(zip(header, r)) for r in rows]


def pm(values: list[float], scale: float = 100, digits: int = 1, population: bool = True) -> str:
    m = statistics.mean(values)
    s = (statistics.pstdev(values) if population else statistics.stdev(values)) if len(values) > 1 else 0.0
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


# --- the pages as a whole ---------------------------------------------------------------------------------------------


def test_every_benchmark_page_exists_and_renders():
    assert {p.name for p in PAGES} == {"index.md", *bt.PAGES}
    for page in PAGES:
        source = page.read_text()
        rendered = bt.render_markdown(source, RESULTS, page_dir="benchmarks")
        assert not bt.PLACEHOLDER.search(rendered), page.name
        assert "{{" not in rendered, page.name
        for header, rows in tables_of(rendered):
            assert rows and all(len(r) == len(header) for r in rows), (page.name, header)


def test_no_page_source_has_a_pasted_number_table():
    """Outside placeholders a page may hold tables of words (the index's list of pages), never a row with a digit."""
    for page in PAGES:
        source = bt.PLACEHOLDER.sub("", page.read_text())
        rows = [line for line in source.splitlines() if line.lstrip().startswith("|") and re.search(r"\d", line)]
        assert not rows, f"{page.name} has table rows with numbers in its source: {rows[:3]}"


def test_every_result_json_is_shown_by_a_page():
    used = {s for page in PAGES for s in bt.page_sources(page.read_text())}
    every = {p.name for p in RESULTS.glob("*.json")}
    assert used <= every, f"pages read files that are missing: {sorted(used - every)}"
    unused = every - used - set(bt.LEFT_OUT)
    assert not unused, f"no page shows {sorted(unused)}: add a table, or list it in LEFT_OUT with the reason"
    assert all(reason for reason in bt.LEFT_OUT.values())


def test_every_result_png_is_shown_by_a_page():
    shown = {bt.FIGURES[name].png for page in PAGES for kind, name in bt.placeholders(page.read_text())
             if kind == "figure"}
    assert {p.name for p in RESULTS.glob("*.png")} <= shown


def test_every_table_on_a_page_is_checked_here():
    used = {name for page in PAGES for kind, name in bt.placeholders(page.read_text()) if kind == "table"}
    assert used <= set(CHECKS), f"tables without a number check in this file: {sorted(used - set(CHECKS))}"


@pytest.mark.parametrize("name", sorted({n for p in PAGES for k, n in bt.placeholders(p.read_text()) if k == "table"}))
def test_table_numbers_equal_the_json(name):
    CHECKS[name]()


def test_figures_are_linked_relative_to_the_page():
    assert bt.figure_markdown("scale", "benchmarks") == f"![{bt.FIGURES['scale'].alt}](scale-peak-rss.png)"
    assert bt.figure_markdown("scale", "") == f"![{bt.FIGURES['scale'].alt}](benchmarks/scale-peak-rss.png)"
    assert "not drawn" in bt.figure_markdown("scale", "benchmarks", available=set())


def test_an_unknown_placeholder_fails_the_build():
    with pytest.raises(bt.PlaceholderError, match="no table named 'nonesuch'"):
        bt.render_markdown("<!-- table: nonesuch -->")


# --- one check per table: a few cells against the JSON ----------------------------------------------------------------


def check_throughput():
    d = data("throughput-cpu.json")
    header, rows = only_table("throughput-cpu")
    assert len(rows) == len(d["rows"])
    for row, r in zip(rows, d["rows"]):
        assert (row["precision"], row["model"], row["batch"]) == (r["precision"], r["model"], str(r["batch"]))
        assert row["samples/s"] == f"{r['samples_per_s']:.3g}"
        assert row["MFU"] == f"{100 * r['mfu']:.0f}%"
        assert row["ops/step"] == f"{r['ops_per_step']:,}"
        assert row["memory"] == f"{r['step_memory_mb']:.0f}"
    text = bt.render_table("throughput-cpu", RESULTS)
    assert f"fp32 {d['peak_flops']['fp32']['used'] / 1e9:.3g} GFLOP/s" in text and d["device"] in text


def check_throughput_variants():
    d = data("throughput-cpu.json")
    tables = tables_of(bt.render_table("throughput-cpu-variants", RESULTS))
    assert len(tables) == len(d["groups"])
    for (header, rows), g in zip(tables, d["groups"]):
        base = next(r["samples_per_s"] for r in g["rows"] if r["variant"] == "defaults")
        for row, r in zip(rows, g["rows"]):
            cells = dict(zip(header, row))
            assert cells["variant"] == r["variant"]
            assert cells["samples/s"] == f"{r['samples_per_s']:.3g}"
            assert cells["vs defaults"] == f"{r['samples_per_s'] / base:.2f}x"


def check_storage():
    d = data("storage.json")
    _, rows = only_table("storage")
    assert [row["dataset"] for row in rows] == [r["dataset"] for r in d["rows"]]
    for row, r in zip(rows, d["rows"]):
        assert row["raw B"] == f"{r['bytes_per_image']['raw_pixels']:,.0f}"
        assert row["token B"] == f"{r['bytes_per_image']['tokens']:,.1f}"
        assert row["tokens / raw"] == f"{r['tokens_percent_of_raw']:.2f}%"
        assert row["acc tokens"] == f"{r['accuracy']['tokens']:.3f}"
        assert row["PSNR dB"] == f"{r['tokenizer']['psnr']:.1f}"


def check_storage_variants():
    d = data("storage.json")
    _, rows = only_table("storage-variants")
    rs = [r for r in d["rows"] if "variants" in r]
    assert len(rows) == len(rs) >= 1
    for row, r in zip(rows, rs):
        assert row["+ augment"] == f"{r['variants']['accuracy']['augment']:.3f}"
        assert row["adapter token acc (held-out)"] == f"{r['variants']['adapter']['adapted_accuracy']:.3f}"


def check_toe():
    d = data("toe-cpu.json")
    _, rows = only_table("toe-cpu")
    for row, s in zip(rows, d["summary"]):
        assert row["seed"] == str(s["seed"])
        assert row["plain final %"] == f"{100 * s['plain_final']:.1f}"
        assert row["ToE final %"] == f"{100 * s['toe_final']:.1f}"
    assert len(rows) == len(d["summary"])


def check_trar():
    d = data("trar-cpu.json")
    _, rows = only_table("trar-cpu")
    for row in rows:
        rs = [r for r in d["runs"] if r["attention"] == row["attention"]]
        assert row["final test accuracy % (mean ± std)"] == pm([r["final_accuracy"] for r in rs])
        assert row["samples/s"] == f"{statistics.mean(r['samples_per_s'] for r in rs):.0f}"
    assert [row["attention"] for row in rows] == ["global", "routed"]


def check_vpt():
    d = data("vpt-cpu.json")
    _, rows = only_table("vpt-cpu")
    assert [row["method"] for row in rows] == list(d["meta"]["methods"])
    for row in rows:
        rs = [r for r in d["runs"] if r["method"] == row["method"]]
        assert row["trainable parameters"] == f"{rs[0]['trainable_parameters']:,}"
        assert row["test accuracy % on classes 5-9 (mean ± std)"].startswith(pm([r["final_accuracy"] for r in rs]))


def check_vpt_levers():
    d = data("vpt-cpu.json")
    _, rows = only_table("vpt-cpu-levers")
    assert len(rows) == len(d["levers"])
    for row, r in zip(rows, d["levers"]):
        assert row["saved activations per batch (MB)"] == f"{r['saved_activation_mb']:.1f}"
        assert row["peak RSS (MB)"] == f"{r['peak_rss_mb']:.0f}"


def _summary(name: str, dataset: str, label: str, budget: float | None) -> dict:
    return next(r for r in data(name)["summary"] if r["dataset"] == dataset and r["label"] == label
                and r["budget_percent"] == budget)


def _acc(r: dict) -> str:
    return f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}"


def _check_coretokens_grid(name: str, placeholder: str, dataset: str, cells: list[tuple[str, float]]):
    """The per-dataset table of a core-token grid: the cell of (label, budget) starts with the JSON's mean ± std."""
    tables = tables_of(bt.render_table(placeholder, RESULTS))
    datasets = sorted({r["dataset"] for r in data(name)["summary"]})
    header, rows = tables[datasets.index(dataset)]
    by_label = {row[0]: dict(zip(header, row)) for row in rows}
    for label, budget in cells:
        r = _summary(name, dataset, label, budget)
        column = next(h for h in header if h.startswith(f"{budget:g}% ("))
        cell = by_label[label][column]
        assert cell.startswith(_acc(r) + f" · F {100 * r['forgetting_mean']:.1f}"), (label, budget, cell)
        if r.get("shortcut_auc") is not None:
            assert cell.endswith(f"AUC {r['shortcut_auc']:.2f}")
    labels = {r["label"] for r in data(name)["summary"] if r["dataset"] == dataset}
    assert set(by_label) == labels


def check_coretokens():
    _check_coretokens_grid("coretokens.json", "coretokens", "digits", [
        ("coreset / class_balanced", 2.0), ("coreset / class_balanced / from mtm-other", 5.0),
        ("coretokenset / chefer / 12.5% tokens", 1.0), ("coretokenset / random / 12.5% tokens / replay paper", 5.0)])
    _check_coretokens_grid("coretokens.json", "coretokens", "fashion", [
        ("coreset / class_balanced", 1.0), ("coretokenset / random / 12.5% tokens", 1.0)])
    none = _summary("coretokens.json", "digits", "none", None)
    header, rows = tables_of(bt.render_table("coretokens", RESULTS))[0]
    assert rows[0][:2] == ["none", f"{_acc(none)} · F {100 * none['forgetting_mean']:.1f}"]


def check_coretokens_subset_replay():
    _check_coretokens_grid("coretokens-subset-replay.json", "coretokens-subset-replay", "digits", [
        ("coreset / class_balanced", 10.0), ("coretokenset / random / 50% tokens", 10.0),
        ("coretokens / chefer", 1.0), ("coreset / herding", 5.0)])
    _check_coretokens_grid("coretokens-subset-replay.json", "coretokens-subset-replay", "shapes", [
        ("coretokenset / atman / 12.5% tokens", 5.0), ("coreset / class_balanced", 5.0)])


def check_coretokens_starts():
    header, rows = only_table("coretokens-starts")
    by_start = {row["start"].split(" ")[0]: row for row in rows}
    assert list(by_start) == ["scratch", "sup-other", "mtm-other", "mtm-tasks", "fill-mtm-tasks"]
    coreset5 = next(h for h in header if h.startswith("coreset 5%"))
    r = _summary("coretokens.json", "digits", "coreset / class_balanced / from mtm-other", 5.0)
    assert by_start["mtm-other"][coreset5] == f"{_acc(r)} · {r['shortcut_auc']:.2f}"
    assert coreset5 == f"coreset 5% ({r['memory_samples']:.0f} samples)"
    r = _summary("coretokens.json", "digits", "none / from sup-other", None)
    assert by_start["sup-other"]["none"] == _acc(r)
    fill = next(h for h in header if h.startswith("1%, random, mtm fill"))
    r = _summary("coretokens.json", "digits", "coretokenset / random / 12.5% tokens / replay mtm / from fill-mtm-tasks", 1.0)
    assert by_start["fill-mtm-tasks"][fill] == f"{_acc(r)} · {r['shortcut_auc']:.2f}"


def check_coretokens_fashion():
    header, rows = only_table("coretokens-fashion")
    row = rows[0]
    r = _summary("coretokens.json", "fashion", "coreset / class_balanced", 2.0)
    assert row[f"coreset 2% ({r['memory_samples']:.0f} samples)"] == f"{_acc(r)} · {r['shortcut_auc']:.2f}"
    r = _summary("coretokens.json", "fashion", "joint", None)
    assert row["joint"] == _acc(r)


def check_coretokens_experiment():
    comp = data("coretokens-experiment.json")
    _, rows = only_table("coretokens-experiment")
    assert len(rows) == len(comp["groups"])
    for row, g in zip(rows, comp["groups"]):
        assert row["method"] == g["params"]["memory.method"]
        assert row["n"] == str(g["n"])
        m, s = g["mean"]["final_average_accuracy"], g["std"]["final_average_accuracy"]
        assert row["accuracy (%)"] == f"{100 * m:.2f} ± {100 * s:.2f}"
        assert row["memory bytes"].startswith(f"{g['mean']['memory_bytes']:,.0f} ± ")


def check_vqa_kept_tokens():
    comp = data("vqa-kept-tokens-experiment.json")
    _, rows = only_table("vqa-kept-tokens")
    assert [row["scorer"] for row in rows] == [g["params"]["memory.scorer"] for g in comp["groups"]]
    for row, g in zip(rows, comp["groups"]):
        for key, column in (("named_object_share", "named-object share (%)"), ("named_object_area", "named-object area (%)")):
            assert row[column] == f"{100 * g['mean'][key]:.1f} ± {100 * g['std'][key]:.1f}"
        m, s = g["mean"]["final_average_accuracy"], g["std"]["final_average_accuracy"]
        assert row["accuracy (%)"] == f"{100 * m:.2f} ± {100 * s:.2f}"


def _check_memory_row(row: dict, g: dict, accuracy: bool = True) -> None:
    """A memory experiment's table row against its comparison group: method, budget and (VQA) the accuracy cell."""
    assert row["method"] == g["params"]["memory.method"]
    assert row["budget"] == str(g["params"].get("memory.budget", "-"))
    if accuracy:
        m, s = g["mean"]["final_average_accuracy"], g["std"]["final_average_accuracy"]
        assert row["accuracy (%)"] == f"{100 * m:.2f} ± {100 * s:.2f}"


def check_vqa_memory():
    comp = data("vqa-memory-experiment.json")
    _, rows = only_table("vqa-memory")
    assert len(rows) == len(comp["groups"]) == 14
    for row, g in zip(rows, comp["groups"]):
        _check_memory_row(row, g)
        if g["mean"].get("named_object_share") is not None:
            assert row["named-object share (%)"].startswith(f"{100 * g['mean']['named_object_share']:.1f} ± ")


def check_vqa_memory_mask():
    comp = data("vqa-memory-mask-experiment.json")
    _, rows = only_table("vqa-memory-mask")
    ran = [g for g in comp["groups"] if g["n"]]
    assert len(rows) == len(ran) == 12 and {g["params"]["memory.method"] for g in ran} == {"coreset", "coretokenset"}
    for row, g in zip(rows, ran):
        _check_memory_row(row, g)
        assert row["n"] == "3"


def check_captioning_memory():
    comp = data("captioning-memory-experiment.json")
    _, rows = only_table("captioning-memory")
    assert len(rows) == len(comp["groups"]) == 14
    for row, g in zip(rows, comp["groups"]):
        _check_memory_row(row, g, accuracy=False)  # captioning's headline is CIDEr-D, below
        assert row["CIDEr-D"] == f"{g['mean']['cider']:.3f} ± {g['std']['cider']:.3f}"
        assert g["mean"]["cider"] == g["mean"]["final_average_accuracy"]  # captioning's headline score
        for key, column in (("object_recall", "object recall (%)"), ("count_accuracy", "count accuracy (%)")):
            assert row[column] == f"{100 * g['mean'][key]:.1f} ± {100 * g['std'][key]:.1f}"


def check_caption_object_share():
    d = data("caption-object-share.json")
    _, rows = only_table("caption-object-share")
    assert [row["memory"] for row in rows] == [r["group"] for r in d["rows"]] and len(rows) == 12  # no none, no joint
    for row, r in zip(rows, d["rows"]):
        assert row["kept tokens on the objects (%)"] == f"{100 * r['share_mean']:.1f} ± {100 * r['share_std']:.1f}"
        if r["group"].startswith("coreset"):  # whole grids: every cell kept, so the share is the area
            assert abs(r["share_mean"] - r["area_mean"]) < 1e-9


def check_scene_shape_recovery():
    d = data("scene-shape-recovery.json")
    _, rows = only_table("scene-shape-recovery")
    assert len(rows) == len(d["rows"]) and {r["grid"] for r in d["rows"]} == {"12x12", "24x24"}
    for row, r in zip(rows, d["rows"]):
        assert (row["grid"], row["reads"]) == (r["grid"], r["target"])
        for key in ("pixels", "reconstruction", "tokens"):
            assert row[key] == f"{100 * r[key]:.1f}%" and r[key] >= r["floor"]  # every probe reads more than the floor
        assert row["majority"] == f"{100 * r['floor']:.1f}%"


def check_vqa_text_share():
    d = data("vqa-text-share.json")
    _, rows = only_table("vqa-text-share")
    assert len(rows) == len(d["rows"]) and {r["grid"] for r in d["rows"]} >= {"12x12", "24x24"}
    for row, r in zip(rows, d["rows"]):
        assert (row["family"], row["grid"], row["tokens kept"], row["positions"]) == (r["family"], r["grid"], str(r["tokens_kept"]), r["positions"])
        assert row["text share"] == f"{100 * r['text_share']:.0f}%"
        parts = r["text_bytes_per_row"] + r["tokens_bytes_per_row"] + r["rest_bytes_per_row"]
        assert abs(parts - r["whole_bytes_per_row"]) < 1e-6


def check_replay_baseline():
    d = data("replay_baseline.json")
    tables = tables_of(bt.render_table("replay_baseline", RESULTS))
    assert len(tables) == len(d["meta"]["datasets"])
    for (header, rows), name in zip(tables, d["meta"]["datasets"]):
        cells = {row[0]: dict(zip(header, row)) for row in rows}
        runs = [r for r in d["runs"] if r["dataset"] == name]
        for budget in d["meta"]["datasets"][name]["budgets"]:
            group = [r for r in runs if r["method"] == "er" and r["budget_bytes"] == budget]
            row = cells[f"ER {budget:,} B ({group[0]['mem_samples']} samples)"]
            assert row["final average accuracy %"] == pm([r["final_avg_acc"] for r in group], population=False)
            assert row["bytes stored"] == f"{group[0]['stored_bytes']:,}"
        joint = [r["final_avg_acc"] for r in runs if r["method"] == "joint"]
        assert cells["joint"]["final average accuracy %"] == pm(joint, population=False)


def _check_replay_comparison(placeholder: str, dataset: str, budget: int, coreset: tuple[str, float]):
    d = data("replay_baseline.json")
    header, rows = only_table(placeholder)
    column = next(h for h in header if h.startswith(f"{budget:,} B ("))
    er = [r for r in d["runs"] if r["dataset"] == dataset and r["method"] == "er" and r["budget_bytes"] == budget]
    row = next(r for r in rows if r[header[0]].startswith("avalanche ER"))
    assert row[column] == f"{pm([r['final_avg_acc'] for r in er], population=False)} ({er[0]['mem_samples']} images)"
    r = _summary(coreset[0], dataset, "coreset / class_balanced", coreset[1])
    row = next(r for r in rows if r[header[0]].startswith("tokenforge coreset (ViT on tokens)"))
    assert row[column] == f"{_acc(r)} ({r['memory_samples']:.0f} samples)"


def check_replay_comparison_digits():
    _check_replay_comparison("replay-comparison-digits", "digits", 3117, ("coretokens.json", 5.0))
    _check_replay_comparison("replay-comparison-digits", "digits", 6235, ("coretokens-subset-replay.json", 10.0))
    header, rows = only_table("replay-comparison-digits")
    best = next(r for r in rows if r[header[0]] == "tokenforge best core tokenset")
    r = _summary("coretokens-subset-replay.json", "digits", "coretokenset / random / 50% tokens", 10.0)
    assert best[header[-1]].startswith(_acc(r) + " (")


def check_replay_comparison_fashion():
    _check_replay_comparison("replay-comparison-fashion", "fashion", 8012, ("coretokens.json", 2.0))


def check_trar_sequence():
    d = data("trar-sequence.json")
    _, rows = only_table("trar-sequence")
    assert len(rows) == len(d["rows"])
    for row, r in zip(rows, d["rows"]):
        assert (row["dataset"], row["memory"], row["attention"]) == (r["dataset"], r["memory"], r["attention"])
        assert row["final avg accuracy % (mean ± std)"] == f"{r['accuracy']:.1f} ± {r['accuracy_std']:.1f}"
        assert row["per seed"] == " / ".join(f"{a:.1f}" for a in r["per_seed"])
        assert row["saved activations per batch MB"] == f"{r['saved_activation_mb']:.2f}"


def check_vqa_sequence():
    d = data("vqa-sequence.json")
    _, rows = only_table("vqa-sequence")
    assert [row["memory"] for row in rows] == [r["memory"] for r in d["rows"]]
    for row, r in zip(rows, d["rows"]):
        m, s = r["final_average_accuracy"]
        assert row["final avg. VQA accuracy"] == f"{100 * m:.1f} ± {100 * s:.1f}"
        m, s = r["memory_bytes"]
        assert row["memory bytes"] == f"{m:,.0f} ± {s:,.0f}"


def check_vqa_curves():
    d = data("vqa-curves.json")
    header, rows = only_table("vqa-curves")
    assert [row["family"] for row in rows] == list(bt.VQA_FAMILIES)
    last = {r["name"]: r["curve"][-1]["accuracy"] for r in d["runs"]}
    assert header[1 : 1 + len(last)] == [bt.VQA_LABELS[n] for n in last]
    goals = []
    for name in (n for n in last if n != "blind"):
        for row in rows:
            f = row["family"]
            assert row[bt.VQA_LABELS[name]] == f"{100 * last[name][f]:.1f}" and row["blind"] == f"{100 * last['blind'][f]:.1f}"
            assert row[f"{bt.VQA_LABELS[name]} − blind"] == f"{100 * (last[name][f] - last['blind'][f]):+.1f}"
        met = all(last[name][f] - last["blind"][f] >= 0.2 for f in bt.VQA_FAMILIES) and min(last[name]["color"], last[name]["shape"]) >= 0.8
        goals.append(f"{bt.VQA_LABELS[name]}: {'met' if met else 'not met'}.")
    assert "colour and shape at 80% or more): " + " ".join(goals) in bt.render_table("vqa-curves", RESULTS)


def _check_deepspeed(name: str):
    d = data(f"{name}.json")
    (header, rows), = tables_of(bt.render_table(name, RESULTS))
    assert header == ["setting", "micro-batch", "samples/s", "vs fp32", "peak memory, MB", "vs fp32", "final train loss"]
    base = d["rows"][0]
    assert len(rows) == len(d["rows"])
    for row, r in zip(rows, d["rows"]):
        assert row[0] == r["setting"]
        assert row[2] == f"{r['samples_per_s']:.0f}"
        assert row[3] == f"{r['samples_per_s'] / base['samples_per_s']:.2f}x"
        assert row[4] == f"{r['peak_memory_mb']:.0f}"
        assert row[5] == f"{r['peak_memory_mb'] / base['peak_memory_mb']:.2f}x"
        assert row[6] == f"{r['final_loss']:.3f}"
    assert d["device"] in bt.render_table(name, RESULTS)


def check_scale():
    d = data("scale.json")
    header, rows = tables_of(bt.render_table("scale", RESULTS))[0]
    cells = {row[0]: dict(zip(header, row)) for row in rows}
    for size in d["sizes"]:
        st = size["stages"]["tokenize_part"]
        column = f"{size['images'] // 1000}k peak RSS MiB"
        assert cells["tokenize (each part)"][column] == f"{st['max_rss_mb']:,.0f} ({st['job_peak_rss_mb']:,.0f})"
    first, last = d["sizes"][0]["stages"]["shard_part"], d["sizes"][-1]["stages"]["shard_part"]
    assert cells["shard (each part)"][header[-1]] == f"{last['job_peak_rss_mb'] / first['job_peak_rss_mb']:.2f}×"
    assert d["meta"]["date"] in bt.render_table("scale", RESULTS)


def check_scale_summary():
    d = data("scale.json")
    header, rows = only_table("scale-summary")
    row = next(r for r in rows if r["job"] == "tokenizer")
    for size, column in zip(d["sizes"], header[1:]):
        assert row[column] == f"{size['stages']['tokenizer']['job_peak_rss_mb']:,.0f} MiB"


def check_scale_findings():
    assert bt.render_table("scale-findings", RESULTS) == data("scale.json")["findings"].strip("\n")


def check_gpu_check():
    d = data("gpu_check-h100.json")
    _, rows = only_table("gpu_check-h100")
    assert {row["setting"] for row in rows} == set(d)
    for row in rows:
        r = d[row["setting"]]
        assert row["final average accuracy %"] == f"{100 * r['final_average_accuracy']:.1f}"
        assert row["tasks run"] == str(len(r["accuracy_matrix"]))
        assert row["peak GPU memory, MB"] == f"{max(r['peak_gpu_memory_mb']):,.0f}"


def check_gpu_check_tasks():
    d = data("gpu_check-h100.json")
    _, rows = only_table("gpu_check-h100-tasks")
    for row in rows:
        m = d[row["setting"]]["accuracy_matrix"]
        for t, accuracies in enumerate(m):
            assert row[f"after task {t}"] == f"{100 * statistics.mean(accuracies[: t + 1]):.1f}"


def check_sources():
    _, rows = only_table("sources")
    listed = {row["results file"].strip("`").removeprefix("benchmarks/results/") for row in rows}
    assert listed == {p.name for p in RESULTS.glob("*.json")} - set(bt.LEFT_OUT)
    scale = next(row for row in rows if row["results file"] == "`benchmarks/results/scale.json`")
    d = data("scale.json")
    assert scale["date, versions"].startswith(f"{d['meta']['date']}, torch {d['meta']['torch']}")


CHECKS = {
    "throughput-cpu": check_throughput,
    "throughput-cpu-variants": check_throughput_variants,
    "storage": check_storage,
    "storage-variants": check_storage_variants,
    "toe-cpu": check_toe,
    "trar-cpu": check_trar,
    "vpt-cpu": check_vpt,
    "vpt-cpu-levers": check_vpt_levers,
    "coretokens": check_coretokens,
    "coretokens-subset-replay": check_coretokens_subset_replay,
    "coretokens-starts": check_coretokens_starts,
    "coretokens-fashion": check_coretokens_fashion,
    "coretokens-experiment": check_coretokens_experiment,
    "vqa-kept-tokens": check_vqa_kept_tokens,
    "vqa-memory": check_vqa_memory,
    "vqa-memory-mask": check_vqa_memory_mask,
    "captioning-memory": check_captioning_memory,
    "caption-object-share": check_caption_object_share,
    "scene-shape-recovery": check_scene_shape_recovery,
    "vqa-text-share": check_vqa_text_share,
    "replay_baseline": check_replay_baseline,
    "replay-comparison-digits": check_replay_comparison_digits,
    "replay-comparison-fashion": check_replay_comparison_fashion,
    "trar-sequence": check_trar_sequence,
    "vqa-sequence": check_vqa_sequence,
    "vqa-curves": check_vqa_curves,
    "deepspeed_options-gpu": lambda: _check_deepspeed("deepspeed_options-gpu"),
    "deepspeed_options-cpu": lambda: _check_deepspeed("deepspeed_options-cpu"),
    "scale": check_scale,
    "scale-summary": check_scale_summary,
    "scale-findings": check_scale_findings,
    "gpu_check-h100": check_gpu_check,
    "gpu_check-h100-tasks": check_gpu_check_tasks,
    "sources": check_sources,
}


# --- the hook inside MkDocs -------------------------------------------------------------------------------------------


def test_hook_builds_the_benchmark_pages_strictly(tmp_path):
    """The benchmark pages alone through `mkdocs build --strict` with the hook: placeholders replaced, figures in the
    site, no broken link (needs MkDocs; the API pages and the theme are left out to keep it quick)."""
    pytest.importorskip("mkdocs")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    docs = tmp_path / "docs"
    (docs / "benchmarks").mkdir(parents=True)
    for page in PAGES:
        (docs / "benchmarks" / page.name).write_text(page.read_text())
    (docs / "index.md").write_text("# tokenforge\n\n[Benchmarks](benchmarks/index.md)\n")
    config_file = tmp_path / "mkdocs.yml"
    config_file.write_text(
        "site_name: test\n"
        f"docs_dir: {docs}\n"
        f"site_dir: {tmp_path / 'site'}\n"
        "strict: true\n"
        "markdown_extensions: [tables]\n"
        f"hooks: [{DOCS / 'hooks' / 'benchmarks.py'}]\n"
        "validation: {omitted_files: warn, absolute_links: warn, unrecognized_links: warn, anchors: warn}\n"
    )
    try:
        build(load_config(str(config_file)))
    finally:  # MkDocs registers the hook as the module "benchmarks"; leave no such module to later tests
        hook = sys.modules.get("benchmarks")
        if getattr(hook, "__file__", None) == str(DOCS / "hooks" / "benchmarks.py"):
            del sys.modules["benchmarks"]
    html = (tmp_path / "site" / "benchmarks" / "scale" / "index.html").read_text()
    d = data("scale.json")
    assert f"{d['sizes'][0]['stages']['tokenizer']['job_peak_rss_mb']:,.0f} MiB" in html
    assert "<!-- table:" not in html
    for name in ("coretokens", "coretokens-subset-replay"):
        assert (tmp_path / "site" / "benchmarks" / bt.FIGURES[name].filename).read_bytes() == \
            (RESULTS / bt.FIGURES[name].png).read_bytes()
