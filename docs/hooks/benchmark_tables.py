"""The benchmark pages' tables and plots, rendered from benchmarks/results/*.json when the docs are built.

A page under docs/ holds placeholders, never numbers, each on a line of its own (one inside a sentence or inline
code is left alone):

    <!-- table: NAME -->     a Markdown table (with its caption) rendered from the JSON files TABLES[NAME] names
    <!-- figure: NAME -->    an image: a PNG of benchmarks/results/ copied into the site, or a plot drawn here

`render_markdown` replaces them; the MkDocs hook (docs/hooks/benchmarks.py) calls it for every page and adds the
figures' files to the site. Plain functions: this module imports neither mkdocs nor torch (matplotlib only to draw
a plot), so the tests call them directly. Most tables follow the layout of the .md file the benchmark script wrote
next to its JSON (the formatting code is ported from the script); a few combine several JSON files.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
# The benchmark scripts' own formatting where it is importable without torch (their top-level imports are light)
sys.path.insert(0, str(ROOT / "benchmarks"))
import scale as scale_script  # noqa: E402
import throughput as throughput_script  # noqa: E402
FIGURE_DIR = "benchmarks"  # where the figures' files lie in the site (the docs folder of the benchmark pages)

PLACEHOLDER = re.compile(r"^<!--[ \t]*(table|figure):[ \t]*([A-Za-z0-9_.-]+)[ \t]*-->[ \t]*$", re.MULTILINE)

# benchmarks/results/*.json that no page shows, with the reason (the test checks that every other file is used).
LEFT_OUT: dict[str, str] = {}

MISSING = "–"


class PlaceholderError(ValueError):
    """A placeholder names no table or figure, or its JSON is missing."""


def load(results: Path, name: str) -> dict:
    path = Path(results) / name
    if not path.exists():
        raise PlaceholderError(f"{path} is missing")
    return json.loads(path.read_text())


# --- registries -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    sources: tuple[str, ...]  # JSON files under benchmarks/results, passed to render in this order
    render: Callable[..., str]


@dataclass(frozen=True)
class Figure:
    sources: tuple[str, ...]  # JSON files it shows (for a copied PNG: the JSON its script drew it from)
    filename: str  # its file in the site, under FIGURE_DIR
    alt: str
    png: str | None = None  # a PNG under benchmarks/results copied as it is, or
    plot: Callable[..., bytes] | None = None  # a plot drawn from the sources (matplotlib)


TABLES: dict[str, Table] = {}
FIGURES: dict[str, Figure] = {}


def table(name: str, *sources: str):
    def register(fn):
        TABLES[name] = Table(sources, fn)
        return fn

    return register


def sources_of(kind: str, name: str) -> tuple[str, ...]:
    registry = TABLES if kind == "table" else FIGURES
    if name not in registry:
        raise PlaceholderError(f"no {kind} named {name!r} (known: {', '.join(sorted(registry))})")
    return registry[name].sources


def placeholders(markdown: str) -> list[tuple[str, str]]:
    """The (kind, name) of every placeholder in a page's source, in order."""
    return [(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(markdown)]


def render_table(name: str, results: Path = RESULTS) -> str:
    sources_of("table", name)
    if name == "sources":  # every page's files: reads the pages themselves
        return sources_table(ROOT / "docs" / "benchmarks", results)
    spec = TABLES[name]
    return spec.render(*(load(results, s) for s in spec.sources)).strip("\n")


def figure_markdown(name: str, page_dir: str = FIGURE_DIR, available: set[str] | None = None) -> str:
    """The image reference to a figure from a page in `page_dir` (the page's folder under docs/), or a note where it
    was not made (`available`: the figures the build made; None: assume every one)."""
    sources_of("figure", name)
    fig = FIGURES[name]
    if available is not None and name not in available:
        return f"*(The figure {fig.filename} was not drawn: matplotlib is not installed where the docs were built.)*"
    target = posixpath.relpath(f"{FIGURE_DIR}/{fig.filename}", page_dir or ".")
    return f"![{fig.alt}]({target})"


def render_markdown(markdown: str, results: Path = RESULTS, page_dir: str = FIGURE_DIR,
                    figures: set[str] | None = None) -> str:
    """A page's Markdown with every placeholder replaced by its table or figure."""

    def replace(m: re.Match) -> str:
        kind, name = m.group(1), m.group(2)
        if kind == "table":
            return render_table(name, results)
        return figure_markdown(name, page_dir, figures)

    return PLACEHOLDER.sub(replace, markdown)


def figure_content(name: str, results: Path = RESULTS) -> bytes:
    """A figure's file: the PNG's bytes, or the plot drawn as PNG (needs matplotlib)."""
    fig = FIGURES[name]
    if fig.png is not None:
        path = Path(results) / fig.png
        if not path.exists():
            raise PlaceholderError(f"{path} is missing")
        return path.read_bytes()
    return fig.plot(*(load(results, s) for s in fig.sources))


# --- formatting helpers -----------------------------------------------------------------------------------------------


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A Markdown table; `align` one character per column: "l" (---) or "r" (---:); default all "l"."""
    align = align or "l" * len(header)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    line = lambda cells: "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def mean_sd(values: list[float], population: bool = True) -> tuple[float, float]:
    if len(values) < 2:
        return statistics.mean(values), 0.0
    return statistics.mean(values), (statistics.pstdev(values) if population else statistics.stdev(values))


# --- throughput -------------------------------------------------------------------------------------------------------
# benchmarks/throughput.py's markdown()


_flops = throughput_script._flops  # FLOP/s as "1.2 T" / "340 G"
_tp_mem = throughput_script._mem  # the step's memory (a GPU's peak and step)


def _tp_ops(r: dict) -> str:
    ops, launches = r.get("ops_per_step"), r.get("launches_per_step")
    text = "-" if ops is None else f"{ops:,}"
    return text if launches is None else f"{text} ({launches:,} launches)"


def _tp_cuda(result: dict) -> bool:
    return result["memory_kind"].startswith("GPU")


def throughput_caption(result: dict) -> str:
    cuda = _tp_cuda(result)
    peaks = ", ".join(f"{p} {_flops(v['used'])}FLOP/s" for p, v in result["peak_flops"].items())
    load = (f"; load average {result['loadavg_start'][0]:.1f} at the start, {result['loadavg_end'][0]:.1f} at the end"
            if not cuda else "")
    mem = ("peak GPU memory allocated by torch, MB (its growth over the step)" if cuda else
           "growth of the process's resident memory over one step, MB (activations and temporaries)")
    return (f"Training throughput on {result['device']}, torch {result['torch']}, DeepSpeed {result['deepspeed']} "
            f"({result['wall_s'] / 60:.1f} min{load}). MFU against the measured peak of a {result['peak_matmul_n']}^3 "
            f"matmul of the same dtype: {peaks}. Memory: {mem}. Subset: a task t > 0 step, B current + B replayed "
            "sequences of a quarter of the tokens. ops/step: the ATen ops a step dispatches that compute (eager models; "
            "a GPU launches a kernel for each, a foreach op one per chunk of tensors)"
            + (", and the GPU kernel launches counted by torch.profiler" if cuda else "") + ".")


@table("throughput-cpu", "throughput-cpu.json")
def throughput_table(result: dict) -> str:
    cuda = _tp_cuda(result)
    rows = []
    for r in result["rows"]:
        grid, inp = f"{r['side']}x{r['side']}", "subset 1/4" if r["subset"] else "full"
        if "error" in r:
            rows.append([r["precision"], r["model"], grid, inp, r["batch"], f"failed: {r['error'][:80]}", "", "", "", "", ""])
            continue
        mfu = f"{100 * r['mfu']:.0f}%" if r.get("mfu") else "-"
        rows.append([r["precision"], r["model"], grid, inp, r["batch"], f"{r['samples_per_s']:.3g}",
                     _flops(r["flops_per_sample"]), _flops(r["achieved_flops"]), mfu, _tp_mem(r, cuda), _tp_ops(r)])
    head = ["precision", "model", "grid", "input", "batch", "samples/s", "FLOP/sample", "achieved FLOP/s", "MFU",
            "memory", "ops/step"]
    out = throughput_caption(result) + "\n\n" + md_table(head, rows, "llllrrrrrrr")
    if result.get("skipped"):
        out += "\n\nSkipped (time budget): " + "; ".join(result["skipped"])
    return out


@table("throughput-cpu-variants", "throughput-cpu.json")
def throughput_variants(result: dict) -> str:
    cuda = _tp_cuda(result)
    parts = []
    for g in result["groups"]:
        base = next((r["samples_per_s"] for r in g["rows"] if r.get("variant") == "defaults" and "samples_per_s" in r), None)
        rows = []
        for r in g["rows"]:
            if "error" in r:
                rows.append([r["variant"], f"failed: {r['error'][:80]}", "", "", "", "", ""])
                continue
            vs = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
            mfu = f"{100 * r['mfu']:.0f}%" if r.get("mfu") else "-"
            rows.append([r["variant"], f"{r['samples_per_s']:.3g}", vs, _flops(r["achieved_flops"]), mfu,
                         _tp_mem(r, cuda), _tp_ops(r)])
        head = ["variant", "samples/s", "vs defaults", "achieved FLOP/s", "MFU", "memory", "ops/step"]
        parts.append(f"Variants, {g['case']}, batch {g['batch']} (interleaved):\n\n" + md_table(head, rows, "lrrrrrr"))
    return "\n\n".join(parts)


# --- storage ----------------------------------------------------------------------------------------------------------
# benchmarks/storage.py's markdown() and variants_markdown()


@table("storage", "storage.json")
def storage_table(data: dict) -> str:
    head = ["dataset", "image", "grid × codes", "raw B", "PNG B", "PNG shard B", "JPEG B", "JPEG shard B", "token B",
            "tokens / raw", "PSNR dB", "acc tokens", "acc pixels", "tokens / pixels acc", "tokenize img/s",
            "loader img/s", "training img/s"]
    rows = []
    for r in data["rows"]:
        b = r["bytes_per_image"]
        h, w = r["image_size"]
        rows.append([r["dataset"], f"{h}×{w}×{r['channels']}", f"{r['grid'][0]}×{r['grid'][1]} × {r['codes']}",
                     f"{b['raw_pixels']:,.0f}", f"{b['png']:,.0f}", f"{b['png_shards']:,.0f}", f"{b['jpeg_q90']:,.0f}",
                     f"{b['jpeg_shards']:,.0f}", f"{b['tokens']:,.1f}", f"{r['tokens_percent_of_raw']:.2f}%",
                     f"{r['tokenizer']['psnr']:.1f}", f"{r['accuracy']['tokens']:.3f}", f"{r['accuracy']['pixels']:.3f}",
                     f"{r['token_accuracy_percent_of_pixel']:.0f}%", f"{r['tokenize_images_per_s']:,.0f}",
                     f"{r['loader_images_per_s']:,.0f}", f"{r['train_samples_per_s']['tokens']:,.0f}"])
    meta = data.get("meta", {})
    caption = f"Measured on {meta['machine']} (Python {meta['python']})." if meta.get("machine") else ""
    return (caption + "\n\n" if caption else "") + md_table(head, rows)


@table("storage-variants", "storage.json")
def storage_variants(data: dict) -> str:
    head = ["dataset", "epochs", "acc pixels", "acc tokens", "+ augment", "+ augment + TokenAdapt",
            "best tokens / pixels acc", "adapter token acc (held-out)", "nearest-neighbour baseline", "identity g(f(z))"]
    cell = lambda x: MISSING if x is None else f"{x:.3f}"  # noqa: E731
    rows = []
    for r in data["rows"]:
        if "variants" not in r:
            continue
        v, a = r["variants"]["accuracy"], r["variants"].get("adapter", {})
        best = max(v.values())
        rows.append([r["dataset"], r.get("train_epochs", 15), f"{r['accuracy']['pixels']:.3f}", cell(v.get("plain")),
                     cell(v.get("augment")), cell(v.get("tokenadapt")),
                     f"{100 * best / max(r['accuracy']['pixels'], 1e-9):.0f}%", cell(a.get("adapted_accuracy")),
                     cell(a.get("nearest_baseline_accuracy")), cell(a.get("identity_accuracy"))])
    return md_table(head, rows)


# --- model options: ToE, TRAR, VPT ------------------------------------------------------------------------------------
# benchmarks/toe.py, trar.py and vpt.py's markdown()


@table("toe-cpu", "toe-cpu.json")
def toe_table(data: dict) -> str:
    meta, rows = data["meta"], data["summary"]
    p = meta["preset"]
    out = [f"ToE on Fashion-MNIST tokens (14x14), TokenViT width {p['embed']}, depth {p['depth']}, {p['epochs']} epochs, "
           f"batch {p['batch']}, {meta['device']}, torch {meta['torch']}; target = the plain model's final test accuracy "
           "− 1 point.", ""]
    body = []
    for r in rows:
        toe_t = f"{r['toe_time_to_target_s']:.0f}" if r["toe_time_to_target_s"] is not None else "not reached"
        speed = f"{r['speedup_to_target']:.2f}×" if r["speedup_to_target"] else MISSING
        body.append([r["seed"], f"{100 * r['plain_final']:.1f}", f"{100 * r['toe_final']:.1f}",
                     f"{r['plain_time_to_target_s']:.0f}", toe_t, speed,
                     f"{r['plain_train_s']:.0f} / {r['toe_train_s']:.0f} ({r['speedup_total']:.2f}×)"])
    out.append(md_table(["seed", "plain final %", "ToE final %", "plain s to target", "ToE s to target",
                         "speed-up to target", "total train s plain / ToE"], body))
    reached = [r["speedup_to_target"] for r in rows if r["speedup_to_target"]]
    total = statistics.mean(r["speedup_total"] for r in rows)
    out += ["", f"Mean speed-up to target: {statistics.mean(reached):.2f}× over {len(reached)} of {len(rows)} seeds "
            f"(ToE reached the target in {len(reached)}); whole-run training time {total:.2f}× shorter with ToE."
            if reached else f"ToE never reached the target; whole-run training time {total:.2f}× shorter with ToE."]
    return "\n".join(out)


@table("trar-cpu", "trar-cpu.json")
def trar_table(data: dict) -> str:
    meta, runs = data["meta"], data["runs"]
    p = meta["preset"]
    rows = []
    for kind in ("global", "routed"):
        rs = [r for r in runs if r["attention"] == kind]
        acc = mean_sd([100 * r["final_accuracy"] for r in rs])
        rows.append([kind, f"{acc[0]:.1f} ± {acc[1]:.1f}", f"{statistics.mean(r['samples_per_s'] for r in rs):.0f}",
                     f"{statistics.mean(r['saved_activation_mb'] for r in rs):.1f}"])
    caption = (f"TRAR on Fashion-MNIST tokens (14x14), TokenViT width {p['embed']}, depth {p['depth']}, {p['epochs']} "
               f"epochs, batch {p['batch']}, {meta['device']}, torch {meta['torch']}, seeds "
               f"{', '.join(map(str, meta['seeds']))}.")
    return caption + "\n\n" + md_table(["attention", "final test accuracy % (mean ± std)", "samples/s",
                                        "saved activations per batch (MB)"], rows)


@table("vpt-cpu", "vpt-cpu.json")
def vpt_table(data: dict) -> str:
    meta, runs = data["meta"], data["runs"]
    p = meta["preset"]
    caption = (f"VPT on Fashion-MNIST tokens (14x14): a TokenViT of width {p['embed']} and depth {p['depth']} trained "
               f"on classes 0-4 (test accuracy {100 * meta['backbone']['test_accuracy']:.1f}%), then classes 5-9 learnt "
               f"from it, {p['epochs']} epochs, batch {p['batch']}, {meta['prompt_tokens']} prompt tokens, "
               f"{meta['device']}, torch {meta['torch']}.")
    rows = []
    for method in meta["methods"]:
        rs = [r for r in runs if r["method"] == method]
        acc = mean_sd([100 * r["final_accuracy"] for r in rs])
        rows.append([method, f"{rs[0]['trainable_parameters']:,}", f"{acc[0]:.1f} ± {acc[1]:.1f} (n={len(rs)})",
                     f"{statistics.mean(r['samples_per_s'] for r in rs):.0f}"])
    return caption + "\n\n" + md_table(["method", "trainable parameters",
                                        "test accuracy % on classes 5-9 (mean ± std)", "samples/s"], rows)


@table("vpt-cpu-levers", "vpt-cpu.json")
def vpt_levers(data: dict) -> str:
    rows = data["levers"]
    gpu = any(r["peak_gpu_mb"] is not None for r in rows)
    head = ["method", "fused attention", "activation checkpointing", "saved activations per batch (MB)",
            *(["peak GPU memory (MB)"] if gpu else ["peak RSS (MB)", "RSS rise in training (MB)"]), "samples/s"]
    body = []
    for r in rows:
        memory = [f"{r['peak_gpu_mb']:.0f}"] if gpu else [f"{r['peak_rss_mb']:.0f}", f"{r['rss_rise_mb']:.0f}"]
        body.append([r["method"], "on" if r["fused_attention"] else "off", "on" if r["activation_checkpointing"] else "off",
                     f"{r['saved_activation_mb']:.1f}", *memory, f"{r['samples_per_s']:.0f}"])
    return md_table(head, body)


# --- core tokensets ---------------------------------------------------------------------------------------------------
# the former benchmarks/coretokens.py (commit a34d6e6^): markdown(), _cell() and goal_lines()

CT_TITLES = {  # its DATASETS' titles, where a JSON's meta lacks them
    "digits": "Split-digits (10 classes, 5 tasks)",
    "shapes": "Split-shapes (20 classes, 5 tasks)",
    "fashion": "Split-FashionMNIST (10 classes, 5 tasks, 14x14 tokens, 300 train images per class)",
}
CT_REPLAYS = ["subset", "fill", "mask", "token", "paper", "mtm"]
CT_SCORERS = ["rollout", "chefer", "gradcam", "atman", "random"]
CT_PRETRAINS = {"scratch": None, "sup-other": True, "mtm-other": True, "mtm-tasks": True, "fill-mtm-tasks": False}  # init?
CT_BASE_ORDER = ["none", "joint", "coreset / class_balanced", "coreset / herding", "coreset / gradient",
                 "coretokens / chefer"] + [
    f"coretokenset / {s} / 12.5% tokens{'' if r == 'subset' else f' / replay {r}'}" for r in CT_REPLAYS for s in CT_SCORERS
] + [f"coretokenset / {s} / 50% tokens" for s in ("chefer", "atman", "random")]


def _suffix(pretrain: str) -> str:
    return "" if pretrain == "scratch" else f" / from {pretrain}"


CT_ORDER = [lab + _suffix(p) for p in CT_PRETRAINS for lab in CT_BASE_ORDER]


def _ct_title(data: dict, dataset: str) -> str:
    return data["meta"].get("datasets", {}).get(dataset, {}).get("title") or CT_TITLES.get(dataset, dataset)


def _ct_token_bytes(rows: list[dict]) -> float | None:
    return next((r["budget_bytes"] / (r["budget_percent"] / 100) for r in rows if r.get("budget_bytes")), None)


def _ct_cell(r: dict | None) -> str:
    if r is None:
        return MISSING
    if not r["runs"]:
        return f"below minimum ({r['minimum_bytes']:,} B)"
    size = f" · {r['memory_samples']:.0f}×{r['tokens_per_sample']}" if r.get("tokens_per_sample") else ""
    auc = f" · AUC {r['shortcut_auc']:.2f}" if r.get("shortcut_auc") is not None else ""
    return f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} · F {100 * r['forgetting_mean']:.1f}{size}{auc}"


def coretokens_markdown(data: dict, budgets: list[float]) -> str:
    rows = data["summary"]
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == dataset]
        token_bytes = _ct_token_bytes(rs)
        out += [f"**{_ct_title(data, dataset)}**: final average accuracy % (mean ± std over {max(r['seeds'] for r in rs)} "
                "seeds) · forgetting % · memory samples × tokens. Budgets are shares of the train token file "
                f"({token_bytes:,.0f} bytes)." if token_bytes else f"**{dataset}**", ""]
        head = ["method / selection or scorer"] + [
            f"{b:g}% ({int(b / 100 * token_bytes):,} B)" if token_bytes else f"{b:g}%" for b in budgets]
        body = []
        for lab in (lab for lab in CT_ORDER if any(r["label"] == lab for r in rs)):
            if lab.split(" / ")[0] in ("none", "joint"):
                cells = [_ct_cell(next(r for r in rs if r["label"] == lab))] + ["″"] * (len(budgets) - 1)
            else:
                cells = [_ct_cell(next((r for r in rs if r["label"] == lab and r["budget_percent"] in (b, None)), None))
                         for b in budgets]
            body.append([lab, *cells])
        out += [md_table(head, body), ""]
    return "\n".join(out).rstrip("\n")


def goal_lines(rows: list[dict]) -> list[str]:
    """Per dataset and start: does a core tokenset at 1% reach the coreset at 2% or 5% from the same start, and does an
    attribution scorer beat random tokens (by 3 points) under the same replay?"""
    lines = []
    for dataset in sorted({r["dataset"] for r in rows}):
        for p, init in CT_PRETRAINS.items():
            rs = [r for r in rows if r["dataset"] == dataset and r["runs"] and r["label"].endswith(_suffix(p))
                  and (p != "scratch" or " / from " not in r["label"])]
            if not rs:
                continue
            where = f"{dataset}, {'from scratch' if p == 'scratch' else f'from {p}'}"
            base = "scratch" if init is False else p  # a fill-only start: scratch's coreset and no memory
            coreset = {r["budget_percent"]: r["accuracy_mean"] for r in rows if r["dataset"] == dataset and r["runs"]
                       and r["label"] == "coreset / class_balanced" + _suffix(base)}
            best = max((r for r in rs if r["method"] == "coretokenset" and r["budget_percent"] == 1),
                       key=lambda r: r["accuracy_mean"], default=None)
            if best is not None:
                verdicts = [f"{'reaches' if best['accuracy_mean'] >= coreset[b] else 'below'} the coreset at {b:g}% "
                            f"({100 * coreset[b]:.1f}%)" for b in (2, 5) if b in coreset]
                lines.append(f"- {where}: best core tokenset at 1% ({best['label']}) {100 * best['accuracy_mean']:.1f}%: "
                             + ("; ".join(verdicts) or "no coreset at 2% or 5% measured") + ".")
            beats = False
            none = next((r["accuracy_mean"] for r in rows if r["dataset"] == dataset and r["runs"]
                         and r["label"] == "none" + _suffix(base)), None)
            for r in rs:
                if r["method"] != "coretokenset" or "/ random /" in r["label"]:
                    continue
                scorer = r["label"].split(" / ")[1]
                control = next((c for c in rs if c["label"] == r["label"].replace(f"/ {scorer} /", "/ random /")
                                and c["budget_percent"] == r["budget_percent"]), None)
                if control is not None and r["accuracy_mean"] >= control["accuracy_mean"] + 0.03:
                    beats = True
                    worse = none is not None and r["accuracy_mean"] <= none
                    lines.append(f"- {where}: {r['label']} at {r['budget_percent']:g}% beats random tokens by "
                                 f"{100 * (r['accuracy_mean'] - control['accuracy_mean']):.1f} points"
                                 + (f", but both are at or below no memory ({100 * none:.1f}%)." if worse else "."))
            if not beats and any(r["method"] == "coretokenset" for r in rs):
                lines.append(f"- {where}: no attribution scorer beats random tokens by 3 points in any measured cell.")
    return lines


def _ct_caption(data: dict) -> str:
    m = data["meta"]
    earlier = m.get("earlier")
    wall = f"{m['wall_s'] / 60:.0f} minutes of run time" + (
        f" in its last invocation ({earlier['wall_s'] / 60:.0f} in the earlier one, whose "
        f"{m.get('kept_earlier_runs', 'finished')} runs it kept)" if earlier else "")
    return (f"Measured on {m['machine']} (Python {m['python']}), seeds {', '.join(map(str, m['seeds']))}, "
            f"{wall}; training flags `{' '.join(m['train'])}`; a core tokenset "
            f"keeps {100 * m['token_fraction']:g}% of a sample's tokens unless its row says otherwise.")


@table("coretokens", "coretokens.json")
def coretokens_table(data: dict) -> str:
    budgets = data["meta"].get("table_budgets") or data["meta"]["budgets"]
    return "\n\n".join([_ct_caption(data), coretokens_markdown(data, budgets), "\n".join(goal_lines(data["summary"]))])


@table("coretokens-subset-replay", "coretokens-subset-replay.json")
def coretokens_subset_replay_table(data: dict) -> str:
    return "\n\n".join([_ct_caption(data), coretokens_markdown(data, data["meta"]["budgets"]),
                        "\n".join(goal_lines(data["summary"]))])


def _ct_row(rows: list[dict], dataset: str, label: str, budget: float | None) -> dict | None:
    return next((r for r in rows if r["dataset"] == dataset and r["label"] == label
                 and (budget is None or r["budget_percent"] == budget)), None)


def _ct_short(r: dict | None) -> str:
    """"mean ± std · AUC" of a summary row (accuracy %), as the overview tables show it."""
    if r is None:
        return MISSING
    if not r["runs"]:
        return f"below minimum ({r['minimum_bytes']:,} B)"
    auc = f" · {r['shortcut_auc']:.2f}" if r.get("shortcut_auc") is not None else ""
    return f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}{auc}"


def _ct_size(r: dict | None) -> str:
    if r is None or not r.get("runs") or r["method"] in ("none", "joint"):
        return ""
    if r["method"] == "coreset":
        return f"{r['memory_samples']:.0f} samples"
    return f"{r['memory_samples']:.0f}×{r['tokens_per_sample']} tokens"


# The overview's columns: (header, label without the start's suffix, budget %)
CT_START_COLUMNS = [
    ("none", "none", None),
    ("coreset 2%", "coreset / class_balanced", 2.0),
    ("coreset 5%", "coreset / class_balanced", 5.0),
    ("core tokenset 1%, Chefer", "coretokenset / chefer / 12.5% tokens", 1.0),
    ("1%, random", "coretokenset / random / 12.5% tokens", 1.0),
    ("1%, Chefer, mtm fill", "coretokenset / chefer / 12.5% tokens / replay mtm", 1.0),
    ("1%, random, mtm fill", "coretokenset / random / 12.5% tokens / replay mtm", 1.0),
]


@table("coretokens-starts", "coretokens.json")
def coretokens_starts(data: dict) -> str:
    """Split-digits: one row per start, final average accuracy % (mean ± std) · the probe's AUC."""
    rows = data["summary"]
    head = ["start"]
    for title, label, budget in CT_START_COLUMNS:  # the size of the first start that has the column
        size = next((_ct_size(r) for p in CT_PRETRAINS
                     if (r := _ct_row(rows, "digits", label + _suffix(p), budget)) is not None and _ct_size(r)), "")
        head.append(f"{title} ({size})" if size else title)
    body = []
    for start, init in CT_PRETRAINS.items():
        if not any(r["dataset"] == "digits" and r["label"].endswith(_suffix(start)) and
                   (start != "scratch" or " / from " not in r["label"]) for r in rows):
            continue
        cells = []
        for _, label, budget in CT_START_COLUMNS:
            r = _ct_row(rows, "digits", label + _suffix(start), budget)
            if r is None and init is False and label.split(" / ")[0] in ("none", "coreset"):
                cells.append("″ scratch")  # a fill-only start trains from scratch: its baselines are scratch's
            else:
                cells.append(_ct_short(r))
        name = start + (" (not disjoint)" if start == "mtm-tasks" else "")
        body.append([name, *cells])
    token_bytes = _ct_token_bytes([r for r in rows if r["dataset"] == "digits"])
    caption = (f"Split-digits (8×8 tokens, train token file {token_bytes:,.0f} B), final average accuracy % (mean ± std, "
               f"{max(r['seeds'] for r in rows)} seeds) · AUC of the shortcut probe; a column's memory size is that of "
               "its first row:")
    return caption + "\n\n" + md_table(head, body)


@table("coretokens-fashion", "coretokens.json")
def coretokens_fashion(data: dict) -> str:
    rows = [r for r in data["summary"] if r["dataset"] == "fashion"]
    cols = [("none", "none", None), ("joint", "joint", None)] + [
        (f"coreset {b:g}%", "coreset / class_balanced", b)
        for b in sorted({r["budget_percent"] for r in rows if r["method"] == "coreset"})] + [
        ("core tokenset 1%, Chefer", "coretokenset / chefer / 12.5% tokens", 1.0),
        ("1%, random", "coretokenset / random / 12.5% tokens", 1.0)]
    head, cells = [], []
    for title, label, budget in cols:
        r = _ct_row(rows, "fashion", label, budget)
        size = _ct_size(r)
        head.append(f"{title} ({size})" if size else title)
        cells.append(_ct_short(r))
    token_bytes = _ct_token_bytes(rows)
    caption = (f"{_ct_title(data, 'fashion')}, from scratch (train token file {token_bytes:,.0f} B), final average "
               f"accuracy % (mean ± std, {max(r['seeds'] for r in rows)} seeds) · AUC of the shortcut probe:")
    return caption + "\n\n" + md_table(head, [cells])


# --- the experiment config coretokens.yaml: its comparison (results/coretokens/comparison.json) -----------------------
# tokenforge.report.experiment's markdown_table() for the numbers this comparison has

EXP_NUMBERS = [  # (key, header, format of a value)
    ("final_average_accuracy", "accuracy (%)", lambda v: f"{100 * v:.2f}"),
    ("average_forgetting", "forgetting (%)", lambda v: f"{100 * v:.2f}"),
    ("backward_transfer", "BWT (%)", lambda v: f"{100 * v:.2f}"),
    ("memory_bytes", "memory bytes", lambda v: f"{v:,.0f}"),
    ("total_wall_s", "own wall s", lambda v: f"{v:,.1f}"),
]


@table("coretokens-experiment", "coretokens-experiment.json")
def coretokens_experiment(comp: dict, numbers: list | None = None) -> str:
    """An experiment's comparison.json (`tokenforge compare`) as its group table, with `numbers` (EXP_NUMBERS)."""
    numbers = numbers or EXP_NUMBERS
    keys = [a for a in comp["axes"] if a != "seed" and any(a in g["params"] for g in comp["groups"])]
    head = [k.rsplit(".", 1)[-1] for k in keys] + ["n"] + [h for _, h, _ in numbers]
    body = []
    for g in (g for g in comp["groups"] if g["n"]):  # a group none of whose variants ran has no numbers to show
        n = str(g["n"]) if g["n"] == g["variants"] else f"{g['n']}/{g['variants']}"
        cells = [f"{fmt(g['mean'][k])} ± {fmt(g['std'][k])}" if g["mean"].get(k) is not None else "-"
                 for k, _, fmt in numbers]
        body.append([str(g["params"].get(k, "-")) for k in keys] + [n] + cells)
    finished = sum(v["status"] == "finished" for v in comp["variants"])
    caption = (f"Experiment `{comp['experiment']}`: {len(comp['variants'])} variants, {finished} finished; mean ± std "
               "over seeds (n: finished seeds).")
    return caption + "\n\n" + md_table(head, body, "l" * len(keys) + "r" * (1 + len(numbers)))


# config/experiments/vqa_kept_tokens.yaml's comparison: the share of the kept tokens on the objects a question names
KEPT_TOKEN_NUMBERS = [*EXP_NUMBERS[:4], ("named_object_share", "named-object share (%)", lambda v: f"{100 * v:.1f}"),
                      ("named_object_area", "named-object area (%)", lambda v: f"{100 * v:.1f}")]
TABLES["vqa-kept-tokens"] = Table(("vqa-kept-tokens-experiment.json",),
                                  lambda comp: coretokens_experiment(comp, KEPT_TOKEN_NUMBERS))
# config/experiments/vqa_memory.yaml's comparison: every memory at three budgets, with the same columns
TABLES["vqa-memory"] = Table(("vqa-memory-experiment.json",), lambda comp: coretokens_experiment(comp, KEPT_TOKEN_NUMBERS))
# its rerun with the kept positions as a bitmask (--config run=vqa_memory_mask): the memories only (none and joint keep
# no memory, so they were not rerun)
TABLES["vqa-memory-mask"] = Table(("vqa-memory-mask-experiment.json",),
                                  lambda comp: coretokens_experiment(comp, KEPT_TOKEN_NUMBERS))
# config/experiments/captioning_memory.yaml's comparison: CIDEr-D (not a fraction) and whether the captions name the
# scene's objects, each as its final average over the tasks
CAPTION_NUMBERS = [("cider", "CIDEr-D", lambda v: f"{v:.3f}"), ("bleu4", "BLEU-4 (%)", lambda v: f"{100 * v:.1f}"),
                   ("object_recall", "object recall (%)", lambda v: f"{100 * v:.1f}"),
                   ("shape_recall", "shape recall (%)", lambda v: f"{100 * v:.1f}"),
                   ("count_accuracy", "count accuracy (%)", lambda v: f"{100 * v:.1f}"),
                   ("average_forgetting", "CIDEr-D forgetting", lambda v: f"{v:.3f}"), EXP_NUMBERS[3]]
TABLES["captioning-memory"] = Table(("captioning-memory-experiment.json",),
                                    lambda comp: coretokens_experiment(comp, CAPTION_NUMBERS))


@table("scene-shape-recovery", "scene-shape-recovery.json")
def scene_shape_recovery(data: dict) -> str:
    """benchmarks/scene_shape_recovery.py: what a probe reads of each object from pixels, reconstructions and tokens."""
    head = ["scene", "grid", "window (cells)", "reads", "pixels", "reconstruction", "tokens", "majority"]
    body = [[f"{r['size']} px", r["grid"], str(r["window"]), r["target"]]
            + [f"{100 * r[k]:.1f}%" for k in ("pixels", "reconstruction", "tokens", "floor")] for r in data["rows"]]  # fmt: skip
    r = data["rows"][0]
    caption = (f"{data['scenes']} scenes per size, {r['train_objects']:,} train and {r['test_objects']:,} test objects; "
               f"test accuracy of one seeded MLP probe per cell (seed {data['seed']}).")
    return caption + "\n\n" + md_table(head, body, "llrlrrrr")


@table("caption-object-share", "caption-object-share.json")
def caption_object_share(data: dict) -> str:
    """benchmarks/caption_object_share.py: the share of the captioning memories' kept tokens on their scenes' objects."""
    head = ["memory", "seeds", "kept tokens on the objects (%)", "objects' area (%)"]
    body = [[r["group"], str(len(r["seeds"])), f"{100 * r['share_mean']:.1f} ± {100 * r['share_std']:.1f}",
             f"{100 * r['area_mean']:.1f}"] for r in data["rows"]]  # fmt: skip
    caption = (f"Experiment `{data['experiment']}`: per task, the rows it added to its memory; means over the tasks, "
               "then mean ± std over seeds.")
    return caption + "\n\n" + md_table(head, body, "lrrr")


# --- replay baseline --------------------------------------------------------------------------------------------------
# benchmarks/replay_baseline.py's table(), and the comparison at equal bytes with tokenforge's memories


def _pct(values: list[float], population: bool = False) -> str:
    m, s = mean_sd(values, population)
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def _rb_rows(runs: list[dict], dataset: str) -> list[dict]:
    return [r for r in runs if r["dataset"] == dataset]


@table("replay_baseline", "replay_baseline.json")
def replay_baseline_tables(data: dict) -> str:
    meta = data["meta"]
    s = meta["settings"]
    parts = [f"{s['model']}, {s['optimizer']}, minibatch {s['train_mb_size']} (+{s['replay_mb_size']} replayed), "
             f"{s['epochs_per_task']} epochs per task, {s['buffer']}, tasks {s['tasks']} (avalanche {meta['avalanche']}, "
             f"torch {meta['torch']}, on {meta['machine']['cpu']}, {meta['machine']['torch_threads']} torch thread; "
             f"wall time {meta['wall_seconds'] / 60:.1f} min). Final average accuracy = mean over the tasks of the final "
             "model's accuracy on that task's test classes."]
    for name, info in meta["datasets"].items():
        runs = _rb_rows(data["runs"], name)
        keys = sorted({(r["method"], r["budget_bytes"] or 0) for r in runs},
                      key=lambda k: ({"none": 0, "er": 1}.get(k[0], 2), k[1]))
        body = []
        for method, budget in keys:
            group = [r for r in runs if r["method"] == method and (r["budget_bytes"] or 0) == budget]
            if method == "er":
                label, stored = f"ER {budget:,} B ({group[0]['mem_samples']} samples)", f"{group[0]['stored_bytes']:,}"
            else:
                label, stored = ("none (fine-tuning)" if method == "none" else "joint"), MISSING
            forg = [r["forgetting"] for r in group if r["forgetting"] is not None]
            body.append([label, stored, _pct([r["final_avg_acc"] for r in group]),
                         _pct([r["final_acc_all"] for r in group]), _pct(forg) if forg else MISSING])
        parts.append(f"**{info['title']}** ({info['samples']}): mean ± std over seeds {info['seeds']}. Byte budgets: "
                     f"{info['budgets_from']}. One stored sample = {info['sample_bytes']} bytes.\n\n"
                     + md_table(["memory", "bytes stored", "final average accuracy %", "accuracy on all test samples %",
                                 "forgetting %"], body))
    return "\n\n".join(parts)


def _rb_token_bytes(baseline: dict, subset: dict, dataset: str) -> float:
    """The token file the byte budgets are shares of: Fashion-MNIST's from the baseline's settings, digits' from the
    map the budgets were taken from."""
    if dataset == "fashion":
        return baseline["meta"]["settings"]["fashion_token_bytes"]
    return _ct_token_bytes([r for r in subset["summary"] if r["dataset"] == dataset])


def replay_comparison(baseline: dict, coretokens: dict, subset: dict, dataset: str) -> str:
    """Final average accuracy % at equal bytes on disk: avalanche's experience replay on raw pixels against
    tokenforge's coreset (from scratch, and MTM-pretrained) and its best core tokenset at each budget. tokenforge's
    numbers come from coretokens.json, or where it has no such budget from the earlier map
    (coretokens-subset-replay.json)."""
    info = baseline["meta"]["datasets"][dataset]
    runs = _rb_rows(baseline["runs"], dataset)
    token_bytes = _rb_token_bytes(baseline, subset, dataset)
    summaries = [r for src in (coretokens, subset) for r in src["summary"] if r["dataset"] == dataset]

    def tf(label: str, percent: float) -> dict | None:
        return next((r for r in summaries if r["label"] == label and r["budget_percent"] == percent), None)

    def best(percent: float) -> dict | None:
        return max((r for r in summaries if r["method"] == "coretokenset" and r["budget_percent"] == percent and r["runs"]),
                   key=lambda r: r["accuracy_mean"], default=None)

    def cell(r: dict | None, size: bool = True) -> str:
        if r is None:
            return MISSING
        if not r["runs"]:
            return "below minimum"
        text = f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}"
        if not size:
            return text
        what = "" if r["method"] == "coreset" else ": " + r["label"].removeprefix("coretokenset / ")
        return f"{text} ({_ct_size(r)}{what})"

    lines = [("avalanche ER, MLP on raw pixels", None), ("tokenforge coreset (ViT on tokens), from scratch",
             "coreset / class_balanced"), ("tokenforge coreset, MTM-pretrained on another dataset",
             "coreset / class_balanced / from mtm-other"), ("tokenforge best core tokenset", "best")]
    columns = []
    for budget in info["budgets"]:
        percent = round(200 * budget / token_bytes) / 2
        measured = [tf(lab, percent) for _, lab in lines[1:3]] + [best(percent)]
        if any(r is not None and r["runs"] for r in measured):
            columns.append((budget, percent))
    head = [f"{info['title']}, bytes on disk"] + [f"{b:,} B ({p:g}%)" for b, p in columns]
    body = []
    for name, label in lines:
        cells = []
        for budget, percent in columns:
            if label is None:
                group = [r for r in runs if r["method"] == "er" and r["budget_bytes"] == budget]
                cells.append(f"{_pct([r['final_avg_acc'] for r in group])} ({group[0]['mem_samples']} images)"
                             if group else MISSING)
            elif label == "best":
                cells.append(cell(best(percent)))
            else:
                cells.append(cell(tf(label, percent)))
        if label is None or any(c != MISSING for c in cells):
            body.append([name, *cells])
    bounds = []
    for method in ("none", "joint"):
        group = [r for r in runs if r["method"] == method]
        ours = tf(method, None) or next((r for r in summaries if r["label"] == method), None)
        bounds.append(f"{method}: ER's MLP {_pct([r['final_avg_acc'] for r in group])}"
                      + (f", tokenforge's ViT {cell(ours, size=False)}" if ours else ""))
    note = (f"Mean ± std over seeds (ER: sample std over {len(info['seeds'])} seeds; tokenforge: over its seeds, population "
            f"std); budgets are shares of the train token file ({token_bytes:,.0f} B). Without a memory and joint: "
            + "; ".join(bounds) + ".")
    return md_table(head, body) + "\n\n" + note


@table("replay-comparison-digits", "replay_baseline.json", "coretokens.json", "coretokens-subset-replay.json")
def replay_comparison_digits(baseline: dict, coretokens: dict, subset: dict) -> str:
    return replay_comparison(baseline, coretokens, subset, "digits")


@table("replay-comparison-fashion", "replay_baseline.json", "coretokens.json", "coretokens-subset-replay.json")
def replay_comparison_fashion(baseline: dict, coretokens: dict, subset: dict) -> str:
    return replay_comparison(baseline, coretokens, subset, "fashion")


# --- TRAR in the sequence, VQA sequence -------------------------------------------------------------------------------
# the former benchmarks/trar_sequence.py and vqa_sequence.py's markdown()


def _flags_text(flags: list[str]) -> str:
    """["--embed-dim", "48", ...] as "embed_dim 48, ..."."""
    pairs = [(flags[i].lstrip("-").replace("-", "_"), flags[i + 1]) for i in range(0, len(flags) - 1, 2)]
    return ", ".join(f"{k} {v}" for k, v in pairs)


@table("trar-sequence", "trar-sequence.json")
def trar_sequence_table(data: dict) -> str:
    meta = data["meta"]
    caption = (f"TRAR in the class-incremental sequence (5 tasks), the ViT of config/experiments/coretokens.yaml "
               f"({_flags_text(meta['train'])}), {meta['machine']}, runs two at a time with one thread each.")
    body = []
    for r in data["rows"]:
        body.append([r["dataset"], r["memory"], r["attention"], f"{r['accuracy']:.1f} ± {r['accuracy_std']:.1f}",
                     " / ".join(f"{a:.1f}" for a in r["per_seed"]), f"{r['forgetting']:.1f}", f"{r['samples_per_s']:.0f}",
                     f"{r['saved_activation_mb']:.2f}", f"{r['wall_s']:.0f}"])
    head = ["dataset", "memory", "attention", "final avg accuracy % (mean ± std)", "per seed", "forgetting %",
            "samples/s", "saved activations per batch MB", "wall s per run"]
    return caption + "\n\n" + md_table(head, body)


@table("vqa-sequence", "vqa-sequence.json")
def vqa_sequence_table(data: dict) -> str:
    def pm(value, pct=True):
        m, s = value
        return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:,.0f} ± {s:,.0f}"

    body = [[r["memory"], ", ".join(map(str, r["seeds"])), pm(r["final_average_accuracy"]), pm(r["average_forgetting"]),
             pm(r["backward_transfer"]), pm(r["memory_items"], False), pm(r["memory_bytes"], False),
             pm(r["train_samples_per_s"], False)] for r in data["rows"]]
    head = ["memory", "seeds", "final avg. VQA accuracy", "forgetting", "backward transfer", "items kept",
            "memory bytes", "train samples/s"]
    meta = data["meta"]
    return (md_table(head, body) + f"\n\nMean ± standard deviation over the seeds of each row; accuracies and forgetting "
            f"in %. Measured on {meta['platform']} (Python {meta['python']}); the last command: `{meta['command']}`.")


# benchmarks/vqa_curves.py's markdown()
VQA_FAMILIES = ("color", "shape", "count", "exists", "position")


VQA_LABELS = {"image": "image", "image-mtm": "image, MTM start", "blind": "blind"}


@table("vqa-curves", "vqa-curves.json")
def vqa_curves_table(data: dict) -> str:
    p, s, tok = data["preset"], data["summary"], data["tokenizer"]
    names, seeing = list(s["final"]), list(s["gap"])
    mtm = data.get("mtm")
    start = (f"; the MTM start: `tokenforge pretrain --mode mtm --data tasks` on the training grids, {mtm['epochs']} epochs "
             f"at the BLIP's size, masked codes predicted at {100 * mtm['final_accuracy']:.1f}% (the most frequent code: "
             f"{100 * mtm['frequent_code_accuracy']:.1f}%)") if mtm else ""
    caption = (f"Scene VQA in joint training, {data['train_items']:,} training and {data['test_items']:,} test questions "
               f"({p['scenes']:,} scenes of {p['size']} px, {data['grid'][0]}x{data['grid'][1]} tokens of {tok['used_codes']} "
               f"codes, tokenizer PSNR {tok['psnr']:.1f} dB, colour kept for {100 * tok['scene_color_recovery']:.0f}% of "
               f"objects); BLIP width {p['width']}, depth {p['depth']}, {p['epochs']} epochs of batch {p['batch']}, lr "
               f"{p['lr']:g}, seed {data['seed']}{start}. Accuracy after the last epoch, in %. Measured on {data['device']}.")
    head = ["family", *(VQA_LABELS[n] for n in names), *(f"{VQA_LABELS[n]} − blind" for n in seeing)]
    body = [[f, *(f"{100 * s['final'][n][f]:.1f}" for n in names), *(f"{100 * s['gap'][n][f]:+.1f}" for n in seeing)]
            for f in VQA_FAMILIES]
    goals = " ".join(f"{VQA_LABELS[n]}: {'met' if s['goal_met'][n] else 'not met'}." for n in seeing)
    return (caption + "\n\n" + md_table(head, body, "l" + "r" * (len(head) - 1))
            + f"\n\nGoal (every family at least 20 points above blind, colour and shape at 80% or more): {goals}")


# benchmarks/vqa_text_share.py's markdown(): a memory row's bytes on disk, split into text, tokens and the rest
@table("vqa-text-share", "vqa-text-share.json")
def vqa_text_share_table(data: dict) -> str:
    head = ["family", "grid", "tokens kept", "positions", "bytes per row", "text", "tokens", "text share"]
    body = [[r["family"], r["grid"], str(r["tokens_kept"]), r["positions"], f"{r['whole_bytes_per_row']:.1f}", f"{r['text_bytes_per_row']:.1f}",
             f"{r['tokens_bytes_per_row']:.1f}", f"{100 * r['text_share']:.0f}%"] for r in data["rows"]]  # fmt: skip
    rows = data["rows"][0]["rows"]
    caption = (f"Bytes per memory row on disk, {rows} training items (seed 0) of {data['scenes']} scenes per size, "
               f"tokenizer of {data['tokenizer_epochs']} epochs (config/vqa.yaml's), kept positions drawn at random; "
               "text = the row's question and answer (VQA) or caption; tokens = its kept positions and code ids, the positions "
               "stored as a list of small ints or as a bitmask of the grid. "
               f"Measured on {data['machine']}, Python {data['python']}.")
    return caption + "\n\n" + md_table(head, body, "llrl" + "r" * 4)


def plot_vqa_curves(data: dict) -> bytes:
    """Test accuracy per question family after each epoch, one colour per family, one line style per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    styles = {"image": "-", "image-mtm": "-.", "blind": ":"}
    for i, f in enumerate(VQA_FAMILIES):
        for run in data["runs"]:
            curve = run["curve"]
            ax.plot([c["epoch"] for c in curve], [100 * c["accuracy"][f] for c in curve], styles[run["name"]],
                    marker="o", ms=2, color=plt.cm.tab10(i), alpha=0.9, label=f"{f}, {VQA_LABELS[run['name']]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Scene VQA, joint training: " + ", ".join(f"{VQA_LABELS[r['name']]} ({styles[r['name']]})" for r in data["runs"]),
                 fontsize=9)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, ncol=1, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return _png(fig)


# --- DeepSpeed options ------------------------------------------------------------------------------------------------
# benchmarks/deepspeed_options.py's table()


def deepspeed_table(data: dict) -> str:
    rows, p = data["rows"], data["params"]
    base = rows[0]
    kind = "GPU memory allocated by torch" if base["memory_kind"].startswith("GPU") else "the process's RSS"
    caption = (f"ViT {p['embed']}x{p['depth']} ({p['heads']} heads) on {p['side']}x{p['side']} token grids, "
               f"{p['samples']} samples, batch {p['batch']}, {p['epochs']} epochs, one process on {data['device']} "
               f"(Python {data['python']}); peak memory is {kind}.")
    body = [[r["setting"], r["micro_batch"], f"{r['samples_per_s']:.0f}", f"{r['samples_per_s'] / base['samples_per_s']:.2f}x",
             f"{r['peak_memory_mb']:.0f}", f"{r['peak_memory_mb'] / base['peak_memory_mb']:.2f}x", f"{r['final_loss']:.3f}"]
            for r in rows]
    head = ["setting", "micro-batch", "samples/s", "vs fp32", "peak memory, MB", "vs fp32", "final train loss"]
    return caption + "\n\n" + md_table(head, body, "lrrrrrr")


@table("deepspeed_options-gpu", "deepspeed_options-gpu.json")
def deepspeed_gpu(data: dict) -> str:
    return deepspeed_table(data)


@table("deepspeed_options-cpu", "deepspeed_options-cpu.json")
def deepspeed_cpu(data: dict) -> str:
    return deepspeed_table(data)


# --- scale ------------------------------------------------------------------------------------------------------------
# benchmarks/scale.py's render()

SCALE_STAGES = scale_script.STAGES  # the table's order, with what each stage is called there


def _sc_mb(value) -> str:
    return MISSING if value is None else f"{value:,.0f}"


def _sc_s(value) -> str:
    return MISSING if value is None else (f"{value:,.1f}" if value < 100 else f"{value:,.0f}")


def _sc_ratio(a: dict | None, b: dict | None) -> str:
    if not a or not b:
        return MISSING
    if a.get("job_peak_rss_mb") and b.get("job_peak_rss_mb"):
        return f"{b['job_peak_rss_mb'] / a['job_peak_rss_mb']:.2f}×"
    if a.get("max_rss_mb") and b.get("max_rss_mb"):
        return f"*{b['max_rss_mb'] / a['max_rss_mb']:.2f}×*"
    return MISSING


def _sc_label(r: dict) -> str:
    return f"{r['images'] // 1000}k"


def _sc_names(data: dict) -> dict:
    return dict(SCALE_STAGES, shard="shard", tokenize="tokenize") if data["meta"]["parts"] == 1 else SCALE_STAGES


def scale_caption(data: dict) -> str:
    m, meta = data["meta"]["machine"], data["meta"]
    return (f"Scale benchmark (`benchmarks/scale.py`{' --gpu' if meta.get('gpu') else ''}, {meta['date']}; torch "
            f"{meta['torch']}, Snakemake {meta['snakemake']}): the pipeline to `task_0` on 100 procedural classes at 64 "
            f"px, `shard.parts: {meta['parts']}`, `warm_start: false`, `--cores {meta['cores']}`, on {m['cpu']} "
            f"({m['cores']} cores, {m['memory_gb']} GB{', ' + m['gpu'] if m.get('gpu') else ''}). Peak RSS: the largest "
            "`max_rss` of the stage's jobs in Snakemake's benchmark files, MiB; in brackets the job's own VmHWM "
            "(stats.json `resources`) where it writes one. s: the stage's longest job (its wall time with the parts side "
            "by side); job-s: all its jobs' seconds together. The ratio: of the jobs' own VmHWM, or in italics (no "
            "stats.json resources) of `max_rss`, which misses most of a job shorter than a second.")


@table("scale", "scale.json")
def scale_table(data: dict) -> str:
    runs = data["sizes"]
    first, last = runs[0], runs[-1]
    head = ["stage", "jobs"] + [h for r in runs for h in (f"{_sc_label(r)} peak RSS MiB", f"{_sc_label(r)} s")] + [
        f"peak RSS {_sc_label(last)}/{_sc_label(first)}"]
    body = []
    for rule, name in _sc_names(data).items():
        cells = []
        for r in runs:
            st = r["stages"].get(rule)
            if st is None:
                cells += [MISSING, MISSING]
                continue
            own = f" ({_sc_mb(st['job_peak_rss_mb'])})" if st.get("job_peak_rss_mb") is not None else ""
            cells += [f"{_sc_mb(st['max_rss_mb'])}{own}",
                      _sc_s(st["s_max"]) + (f" ({_sc_s(st['s_sum'])} job-s)" if st["jobs"] > 1 else "")]
        jobs = "/".join(sorted({str(r["stages"][rule]["jobs"]) for r in runs if rule in r["stages"]}))
        body.append([name, jobs, *cells, _sc_ratio(first["stages"].get(rule), last["stages"].get(rule))])
    body.append(["**whole run** (pipeline wall)", "", *[c for r in runs for c in ("", _sc_s(r["pipeline_wall_s"]))], ""])
    out = [scale_caption(data), "", md_table(head, body, "lr" + "rr" * len(runs) + "r"), "",
           "Images per second (a stage's images over its job-seconds, and over its jobs' own CPU seconds, which the "
           "machine's load moves less: per core; training: samples of its epoch; tokenizer: its sample of "
           "`max_images`):", ""]
    head = ["stage"] + [h for r in runs for h in (f"{_sc_label(r)} images", f"{_sc_label(r)} img/s",
                                                  f"{_sc_label(r)} img/CPU-s")]
    body = []
    for rule, name in _sc_names(data).items():
        cells = []
        for r in runs:
            st = r["stages"].get(rule) or {}
            cells += [f"{st['images']:,}" if st.get("images") else MISSING, _sc_s(st.get("images_per_s")),
                      _sc_s(st.get("images_per_cpu_s"))]
        if any(c != MISSING for c in cells):
            body.append([name, *cells])
    out.append(md_table(head, body, "l" + "rrr" * len(runs)))
    loads = ", ".join(f"{_sc_label(r)} {r['load_average_before'][0]:.1f} → {r['load_average_after'][0]:.1f}" for r in runs)
    out += ["", f"Load average (1 min) before → after each run: {loads}."]
    return "\n".join(out)


@table("scale-findings", "scale.json")
def scale_findings(data: dict) -> str:
    """The findings the benchmark stored with its numbers (prose written when it ran)."""
    return data.get("findings") or ""


@table("scale-summary", "scale.json")
def scale_summary(data: dict) -> str:
    """Per job: its own peak RSS (VmHWM) at each size, the ratio last/first, and the longest job's seconds at the last."""
    runs = data["sizes"]
    first, last = runs[0], runs[-1]
    head = ["job"] + [f"peak RSS, {_sc_label(r)} images" for r in runs] + [
        f"{_sc_label(last)}/{_sc_label(first)}", f"time at {_sc_label(last)}"]
    body = []
    for rule, name in _sc_names(data).items():
        stages = [r["stages"].get(rule) or {} for r in runs]
        if not all(st.get("job_peak_rss_mb") for st in stages):
            continue
        extra = f" ({last['stages'][rule]['images']:,} images)" if rule in ("train", "evaluate") else ""
        body.append([name + extra, *(f"{st['job_peak_rss_mb']:,.0f} MiB" for st in stages),
                     _sc_ratio(first["stages"].get(rule), last["stages"].get(rule)), f"{_sc_s(stages[-1]['s_max'])} s"])
    walls = ", ".join(f"{_sc_s(r['pipeline_wall_s'])} s ({_sc_label(r)})" for r in runs)
    return md_table(head, body, "l" + "r" * (len(runs) + 2)) + f"\n\nThe whole run took {walls}."


# --- GPU check --------------------------------------------------------------------------------------------------------

GPU_CHECK_ORDER = ["fp32", "bf16-zero2-accum2-actckpt", "torchrun", "deepspeed-launcher"]
GPU_CHECK_LAUNCHERS = {"torchrun": "torchrun --nproc_per_node=1", "deepspeed-launcher": "deepspeed --num_gpus 1"}


def _gc_settings(data: dict) -> list[str]:
    return [k for k in GPU_CHECK_ORDER if k in data] + sorted(k for k in data if k not in GPU_CHECK_ORDER)


def _gc_deepspeed(ds: dict) -> str:
    parts = ["bf16" if ds.get("bf16") else "fp32"]
    if ds.get("zero_stage"):
        parts.append(f"ZeRO-{ds['zero_stage']}")
    if ds.get("gradient_accumulation", 1) > 1:
        parts.append(f"accumulation {ds['gradient_accumulation']}")
    if ds.get("activation_checkpointing"):
        parts.append("activation checkpointing")
    return " + ".join(parts)


@table("gpu_check-h100", "gpu_check-h100.json")
def gpu_check_table(data: dict) -> str:
    body = []
    for name in _gc_settings(data):
        r = data[name]
        tasks = len(r["accuracy_matrix"])
        body.append([name, GPU_CHECK_LAUNCHERS.get(name, "tokenforge train (one process)"), r["device"], r["world_size"],
                     _gc_deepspeed(r["deepspeed"]), tasks, f"{100 * r['final_average_accuracy']:.1f}",
                     f"{max(r['peak_gpu_memory_mb']):,.0f}", f"{statistics.mean(r['train_wall_s']):.1f}",
                     f"{r['memory_bytes'][-1]:,}"])
    head = ["setting", "launcher", "device", "world size", "DeepSpeed", "tasks run", "final average accuracy %",
            "peak GPU memory, MB", "train s per task", "memory bytes after the last task"]
    return md_table(head, body, "lllrlrrrrr")


@table("gpu_check-h100-tasks", "gpu_check-h100.json")
def gpu_check_tasks(data: dict) -> str:
    """The average accuracy over the tasks seen so far, after each task, per setting."""
    n = max(len(data[k]["accuracy_matrix"]) for k in data)
    body = []
    for name in _gc_settings(data):
        m = data[name]["accuracy_matrix"]
        cells = [f"{100 * statistics.mean(row[: t + 1]):.1f}" for t, row in enumerate(m)]
        body.append([name, *cells, *[MISSING] * (n - len(cells))])
    return md_table(["setting", *(f"after task {t}" for t in range(n))], body, "l" + "r" * n)


# --- the index: which JSON each benchmark page shows ------------------------------------------------------------------


def machine_of(name: str, data: dict) -> str:
    """Where a result was measured, as its JSON says (each script stores it in its own place)."""
    meta = data.get("meta", {})
    if name.startswith("gpu_check"):
        return ", ".join(sorted({v["device"] for v in data.values()})) + " (an H100, as the file's name says)"
    if "device" in data:
        return str(data["device"])
    if name.endswith("-experiment.json"):
        run = data.get("experiment", "the run")
        return f"not in the file (an x86_64 machine with 2 cores; its results/{run}/comparison.json)"
    m = meta.get("machine") or meta.get("device") or meta.get("platform")
    if isinstance(m, dict):
        m = ", ".join(str(m[k]) + (" cores" if k == "cores" else " GB" if k == "memory_gb" else "")
                      for k in ("cpu", "cores", "memory_gb", "gpu") if m.get(k))
    return str(m or MISSING)


def facts_of(data: dict) -> str:
    """The date and versions a JSON records (at the top or in its meta), "–" where it records none."""
    meta = data.get("meta", {}) if isinstance(data.get("meta"), dict) else {}
    where = {**{k: v for k, v in meta.items() if isinstance(v, str)},
             **{k: v for k, v in data.items() if isinstance(v, str)}}
    machine = meta.get("machine") if isinstance(meta.get("machine"), dict) else {}
    python = where.get("python") or machine.get("python")
    facts = [where.get("date"), *(f"{k} {where[k]}" for k in ("torch", "deepspeed", "snakemake", "avalanche")
                                  if where.get(k)), f"Python {python}" if python else None]
    return ", ".join(f for f in facts if f) or MISSING


PAGES = {  # the benchmark pages, in the site's order: file under docs/benchmarks -> title
    "throughput.md": "Training throughput",
    "storage.md": "Storage",
    "model-options.md": "Model options",
    "coretokens.md": "Core tokensets",
    "replay-baseline.md": "Replay baseline",
    "trar-sequence.md": "TRAR in the sequence",
    "vqa-sequence.md": "Sequential VQA",
    "deepspeed-options.md": "DeepSpeed options",
    "scale.md": "Scale",
    "gpu-check.md": "GPU check",
}


def page_sources(markdown: str) -> list[str]:
    """The JSON files a page's placeholders read, in order, once each."""
    out: list[str] = []
    for kind, name in placeholders(markdown):
        for s in sources_of(kind, name):
            if s not in out:
                out.append(s)
    return out


def sources_table(pages_dir: Path, results: Path = RESULTS) -> str:
    body = []
    for page, title in PAGES.items():
        path = Path(pages_dir) / page
        if not path.exists():
            continue
        for s in page_sources(path.read_text()):
            d = load(results, s)
            body.append([f"[{title}]({page})", f"`benchmarks/results/{s}`", machine_of(s, d), facts_of(d)])
    return md_table(["page", "results file", "measured on", "date, versions"], body)


TABLES["sources"] = Table((), lambda: sources_table(ROOT / "docs" / "benchmarks"))


# --- figures ----------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def plot_scale(data: dict) -> bytes:
    """Each job's own peak RSS against the number of images (log x): flat lines are the point."""
    plt = _pyplot()
    runs = data["sizes"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (rule, name) in enumerate(_sc_names(data).items()):
        pts = [(r["images"], r["stages"][rule].get("job_peak_rss_mb")) for r in runs if rule in r["stages"]]
        pts = [(x, y) for x, y in pts if y]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], "-o", ms=4, label=name, color=plt.cm.tab10(i % 10))
    ax.set_xscale("log")
    ax.set_xticks([r["images"] for r in runs], [f"{r['images']:,}" for r in runs])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("images in the dataset")
    ax.set_ylabel("peak RSS per job (own VmHWM), MiB")
    ax.set_title("Peak memory per job against dataset size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return _png(fig)


def _plot_curves(runs: list[dict], key: Callable[[dict], str], title: str) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    kinds = sorted({key(r) for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    for r in sorted(runs, key=lambda r: (key(r), r["seed"])):
        color = plt.cm.tab10(kinds.index(key(r)))
        style = ["-", "--", ":", "-."][seeds.index(r["seed"]) % 4]
        ax.plot([p["train_s"] for p in r["curve"]], [100 * p["test_accuracy"] for p in r["curve"]], style, marker="o",
                ms=3, color=color, alpha=0.85, label=f"{key(r)}, seed {r['seed']}")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def plot_toe(data: dict) -> bytes:
    return _plot_curves(data["runs"], lambda r: "ToE" if r["toe"] else "plain",
                        "ToE: test accuracy after each epoch against training time")


def plot_trar(data: dict) -> bytes:
    return _plot_curves(data["runs"], lambda r: r["attention"],
                        "TRAR: test accuracy after each epoch against training time")


def plot_replay_baseline(baseline: dict, coretokens: dict, subset: dict) -> bytes:
    """Final average accuracy against the memory's budget in bytes, per dataset: ER on raw pixels, tokenforge's
    coreset from scratch and its best core tokenset at each budget; no memory and joint (ER's) as lines."""
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    names = list(baseline["meta"]["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.4 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        info = baseline["meta"]["datasets"][name]
        runs = _rb_rows(baseline["runs"], name)
        token_bytes = _rb_token_bytes(baseline, subset, name)
        summaries = [r for src in (coretokens, subset) for r in src["summary"] if r["dataset"] == name]
        er = [(b, mean_sd([100 * r["final_avg_acc"] for r in runs if r["budget_bytes"] == b], population=False))
              for b in info["budgets"] if any(r["budget_bytes"] == b for r in runs)]
        series = [("ER, MLP on raw pixels", er, "-o")]
        for title, pick in (("tokenforge coreset, from scratch",
                             lambda rs: next((r for r in rs if r["label"] == "coreset / class_balanced"), None)),
                            ("tokenforge best core tokenset",
                             lambda rs: max((r for r in rs if r["method"] == "coretokenset"),
                                            key=lambda r: r["accuracy_mean"], default=None))):
            pts = []
            for b in info["budgets"]:
                percent = round(200 * b / token_bytes) / 2
                r = pick([r for r in summaries if r["budget_percent"] == percent and r["runs"]])
                if r is not None:
                    pts.append((b, (100 * r["accuracy_mean"], 100 * r["accuracy_std"])))
            if pts:
                series.append((title, pts, "--s"))
        for title, pts, fmt in series:
            ax.errorbar([b for b, _ in pts], [m for _, (m, _) in pts], yerr=[s for _, (_, s) in pts], fmt=fmt, ms=4,
                        capsize=2, label=title)
        for method, color in (("none", "grey"), ("joint", "black")):
            values = [100 * r["final_avg_acc"] for r in runs if r["method"] == method]
            if values:
                ax.axhline(statistics.mean(values), color=color, ls="-.", lw=1, label=f"{method} (ER's MLP)")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(info["budgets"], [f"{b:,}" for b in info["budgets"]], fontsize=8)
        ax.set_xlabel("memory budget, bytes on disk")
        ax.set_ylabel("final average accuracy (%)")
        ax.set_title(info["title"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


FIGURES.update({
    "coretokens": Figure(("coretokens.json",), "coretokens.png", "final average accuracy against memory bytes",
                         png="coretokens.png"),
    "coretokens-subset-replay": Figure(("coretokens-subset-replay.json",), "coretokens-subset-replay.png",
                                       "final average accuracy against memory bytes, the earlier map",
                                       png="coretokens-subset-replay.png"),
    "scale": Figure(("scale.json",), "scale-peak-rss.png", "peak RSS per job against the number of images",
                    plot=plot_scale),
    "toe-cpu": Figure(("toe-cpu.json",), "toe-cpu-curves.png", "ToE: test accuracy against training time",
                      plot=plot_toe),
    "trar-cpu": Figure(("trar-cpu.json",), "trar-cpu-curves.png", "TRAR: test accuracy against training time",
                       plot=plot_trar),
    "vqa-curves": Figure(("vqa-curves.json",), "vqa-curves.png", "scene VQA test accuracy per family after each epoch, "
                         "with the image and blind", plot=plot_vqa_curves),
    "replay_baseline": Figure(("replay_baseline.json", "coretokens.json", "coretokens-subset-replay.json"),
                              "replay-baseline.png", "experience replay and tokenforge's memories: final average "
                              "accuracy against memory bytes", plot=plot_replay_baseline),
})
