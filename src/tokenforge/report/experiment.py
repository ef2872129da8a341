"""The comparison of an experiment: a grid of pipeline runs ("variants") kept in one folder and described by its
experiment.json, read by `tokenforge compare RESULTS_DIR` and `tokenforge summary RESULTS_DIR`.

- `variant_rows`: one row per variant: its grid settings (params) and the headline numbers of its
  package/metrics.json (for VQA and captioning also each score's final average, e.g. vqa_accuracy, bleu4, cider;
  for VQA on scenes also where its memory kept tokens: named_object_share and named_object_area);
- `group_rows`: one row per group (variants that differ only in seed): mean and std over seeds (std with ddof=1,
  None for a single seed);
- `write_comparison`: comparison.csv (groups), variants.csv, comparison.md, comparison.json, accuracy_vs_bytes.png
  and report.html.

A variant without a readable metrics.json (not finished, or failed) is a row of "-" and is left out of the means.
Accuracies, forgetting and backward transfer are in the unit of the run's headline score: a share (shown in %),
or captioning's CIDEr-D (0 to 10, shown as is).
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_file, read_json
from tokenforge.report import HEADLINE_METRICS
from tokenforge.report.html import STYLE, img, page, table
from tokenforge.report.inputs import NAMED_OBJECT_STATS

log = logging.getLogger(__name__)

EXPERIMENT_FILE = "experiment.json"
SEED_KEY = "seed"
BUDGET_KEY = "memory.budget"
METHOD_KEY = "memory.method"
MISSING = "-"
FILES = ("comparison.md", "report.html", "accuracy_vs_bytes.png")  # what `tokenforge summary` points to
PLOT = "accuracy_vs_bytes.png"
SHOWN = 5  # unfinished variants named in the status line
# Every headline number of a variant (metrics.json path and unit: tokenforge.report.HEADLINE_METRICS); the groups
# average these but the dataset's token bytes (the same for every variant of a tokenizer).
NUMBERS = {h.name: h for h in HEADLINE_METRICS}
GROUPED = tuple(name for name in NUMBERS if name != "dataset_tokens_bytes")
ACCURACIES = tuple(h.name for h in HEADLINE_METRICS if h.unit == "fraction")
LABELS = {"final_average_accuracy": "accuracy", "average_forgetting": "forgetting", "backward_transfer": "BWT",
          "memory_bytes": "memory bytes", "dataset_tokens_bytes": "token bytes", "total_wall_s": "own wall s",
          "named_object_share": "named-object share", "named_object_area": "named-object area"}  # fmt: skip
# CIDEr-D runs from 0 to 10 (tokenforge.report.inputs); every other score is a share.
NOT_SHARES = ("cider",)
# VQA on scenes: the share of the memory's kept tokens on the objects their questions name, and those objects' share
# of the grid (what random tokens get); means over tasks in metrics.json's memory (report/inputs.py builds them).
# Shown after the scores, as shares, when a variant has them.
MEMORY_SHARES = NAMED_OBJECT_STATS


# --- reading ----------------------------------------------------------------------------------


def is_experiment(folder: str | Path) -> bool:
    """Whether `folder` holds an experiment.json."""
    return (Path(folder) / EXPERIMENT_FILE).is_file()


def load_experiment(folder: str | Path) -> dict:
    """experiment.json of `folder`, checked: {"experiment", "axes", "variants": [{name, dir, params, group, seed,
    family}, ...]}; a missing or malformed file is a one-line TokenforgeError naming it."""
    path = Path(folder) / EXPERIMENT_FILE
    if not path.is_file():
        raise TokenforgeError(f"{path}: not found; {folder} is not an experiment folder")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("experiment"), str):
        raise TokenforgeError(f"{path}: expected a JSON object with 'experiment' (a name) and 'variants'")
    variants = data.get("variants")
    if not isinstance(variants, list):
        raise TokenforgeError(f"{path}: 'variants' must be a list")
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or not all(isinstance(v.get(k), str) for k in ("name", "dir", "group")):
            raise TokenforgeError(f"{path}: variants[{i}] needs 'name', 'dir' and 'group' (strings)")
        if not isinstance(v.get("params", {}), dict):
            raise TokenforgeError(f"{path}: variants[{i}].params must be an object")
    axes = data.get("axes")
    if axes is not None and not (isinstance(axes, list) and all(isinstance(a, str) for a in axes)):
        raise TokenforgeError(f"{path}: 'axes' must be a list of config keys")
    return {**data, "axes": axes if axes is not None else _param_keys(variants, [])}


def _param_keys(variants: list[dict], axes: list[str]) -> list[str]:
    """The axes, then any other param key of a variant, each once, in order."""
    keys = dict.fromkeys(axes)
    for v in variants:
        keys.update(dict.fromkeys(v.get("params") or {}))
    return list(keys)


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _at(result: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        result = result.get(key) if isinstance(result, dict) else None
    return result


def _read_metrics(path: Path) -> tuple[str, dict]:
    """("finished", metrics.json) or ("missing" / "unreadable", {}): the report never fails on a variant."""
    if not path.is_file():
        return "missing", {}
    try:
        result = read_json(path)
    except TokenforgeError as exc:
        log.warning("%s; left out of the comparison", exc)
        return "unreadable", {}
    if not isinstance(result, dict):
        log.warning("%s: not a JSON object; left out of the comparison", path)
        return "unreadable", {}
    return "finished", result


def variant_rows(folder: str | Path, experiment: dict) -> list[dict]:
    """One row per variant: name, group, seed, family, dir, status ("finished", "missing", "unreadable"), params,
    metric (the headline score: "accuracy", "vqa_accuracy", "cider"), numbers ({headline: value or None}) and
    scores (VQA, captioning: each score's final average; and each of MEMORY_SHARES that metrics.json's memory
    has). `total_wall_s` is the wall time of the variant's own jobs (its train and evaluate jobs in metrics.json's
    wall_time_s): the stages it shares with other variants (shard, tokenizer, split, pretrain, ...) ran once for
    all of them and are left out."""
    rows = []
    for v in experiment["variants"]:
        status, result = _read_metrics(Path(folder) / v["dir"] / "package" / "metrics.json")
        scores = {name: _number(_at(s, ("final_average_accuracy",)))
                  for name, s in sorted((result.get("score_matrices") or {}).items())}  # fmt: skip
        shares = {name: _number(_at(result, ("memory", name))) for name in MEMORY_SHARES}
        scores.update({name: value for name, value in shares.items() if value is not None})
        rows.append({
            "name": v["name"], "group": v["group"], "seed": v.get("seed", (v.get("params") or {}).get(SEED_KEY)),
            "family": v.get("family") or result.get("family"), "dir": v["dir"], "status": status,
            "params": dict(v.get("params") or {}), "metric": result.get("metric") or "accuracy",
            "numbers": {**{name: _number(_at(result, h.path)) for name, h in NUMBERS.items()},
                        "total_wall_s": _own_wall(result)}, "scores": scores,
        })  # fmt: skip
    return rows


def _own_wall(result: dict) -> float | None:
    """Seconds of the variant's own jobs: train-<t> and evaluate-<t> of metrics.json's wall_time_s."""
    walls = result.get("wall_time_s") or {}
    own = [v for k, v in walls.items() if k.startswith(("train-", "evaluate-")) and isinstance(v, (int, float))]
    return float(sum(own)) if own else None


def _score_names(names) -> list[str]:
    """Score columns in order: the scores by name, then MEMORY_SHARES."""
    found = set(names)
    return sorted(found - set(MEMORY_SHARES)) + [name for name in MEMORY_SHARES if name in found]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def group_rows(variants: list[dict]) -> list[dict]:
    """One row per group, in the order the groups first appear: group, params (the variant's, less the seed),
    variants (how many), n (how many finished), seeds (the finished ones), metric, and mean and std
    ({number: value or None}) over the finished variants of every number of GROUPED and every score."""
    groups: dict[str, list[dict]] = {}
    for row in variants:
        groups.setdefault(row["group"], []).append(row)
    score_names = _score_names(name for row in variants for name in row["scores"])
    out = []
    for name, members in groups.items():
        done = [m for m in members if m["status"] == "finished"]
        mean, std = {}, {}
        for key, where in [*((k, "numbers") for k in GROUPED), *((k, "scores") for k in score_names)]:
            values = [m[where].get(key) for m in done]
            mean[key], std[key] = _mean_std([v for v in values if v is not None])
        params = {k: v for k, v in members[0]["params"].items() if k != SEED_KEY}
        out.append({"group": name, "params": params, "variants": len(members), "n": len(done),
                    "seeds": [m["seed"] for m in done], "metric": (done or members)[0]["metric"],
                    "mean": mean, "std": std})  # fmt: skip
    return out


def comparison(folder: str | Path) -> dict:
    """The whole comparison of an experiment folder: experiment, folder, axes, variants (rows) and groups (rows)."""
    experiment = load_experiment(folder)
    variants = variant_rows(folder, experiment)
    return {"experiment": experiment["experiment"], "folder": str(Path(folder).resolve()), "axes": experiment["axes"],
            "variants": variants, "groups": group_rows(variants)}  # fmt: skip


# --- tables -----------------------------------------------------------------------------------


def _is_share(metric: str) -> bool:
    return metric not in NOT_SHARES


def _fmt(name: str, value: float, metric: str) -> str:
    """One number as the tables show it: shares in % (the header says so), bytes with separators."""
    unit = NUMBERS[name].unit if name in NUMBERS else "fraction"
    if unit == "fraction":
        return f"{100 * value:.2f}" if _is_share(metric if name in ACCURACIES else name) else f"{value:.3f}"
    return f"{value:,.0f}" if unit == "bytes" else f"{value:,.1f}"


def _cell(name: str, mean: float | None, std: float | None, metric: str, mixed: bool = False) -> str:
    """"mean ± std" ("mean" alone for one seed). An accuracy that is no share names its score ("1.250 cider"); one
    that is a share ends in " %" when its column holds both kinds (`mixed`)."""
    if mean is None:
        return MISSING
    text = _fmt(name, mean, metric) + ("" if std is None else f" ± {_fmt(name, std, metric)}")
    if name in ACCURACIES and not _is_share(metric):
        return f"{text} {metric}"
    return text + (" %" if mixed and name in ACCURACIES else "")


def _short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its last part (memory.budget -> budget) unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _header(name: str, share: bool) -> str:
    unit = NUMBERS[name].unit if name in NUMBERS else ("fraction" if _is_share(name) else "")
    suffix = {"fraction": " (%)" if share else "", "bytes": "", "seconds": ""}.get(unit, "")
    return LABELS.get(name, name) + suffix


def table_cells(comp: dict) -> tuple[list[str], list[list[str]], int]:
    """The group table as text: header, rows, and how many leading columns are text (the rest are numbers)."""
    groups = comp["groups"]
    keys = _param_keys([{"params": g["params"]} for g in groups], [a for a in comp["axes"] if a != SEED_KEY])
    keys = [k for k in keys if any(k in g["params"] for g in groups)]
    shorts = _short_names(keys)
    scores = _score_names(name for g in groups for name in g["mean"] if name not in GROUPED)
    numbers = [*GROUPED, *scores]
    share = all(_is_share(g["metric"]) for g in groups)
    header = [shorts[k] for k in keys] or ["group"]
    header += ["n", *(_header(name, share if name in ACCURACIES else _is_share(name)) for name in numbers)]
    rows = []
    for g in groups:
        params = [str(g["params"].get(k, MISSING)) for k in keys] or [g["group"]]
        n = str(g["n"]) if g["n"] == g["variants"] else f"{g['n']}/{g['variants']}"
        rows.append(params + [n] + [_cell(k, g["mean"][k], g["std"][k], g["metric"], not share) for k in numbers])
    return header, rows, max(len(keys), 1)


def text_table(comp: dict) -> str:
    """The group table, aligned for a terminal: text columns left, numbers right."""
    header, rows, text = table_cells(comp)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = []
    for line in [header, *rows]:
        cells = [c.ljust(w) if i < text else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def markdown_table(comp: dict) -> str:
    """The group table as Markdown: "mean ± std" over seeds, accuracies in %."""
    header, rows, text = table_cells(comp)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---" if i < text else "---:" for i in range(len(header))) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def status_line(comp: dict) -> str:
    """experiment NAME: N variants, K finished; the others named (the first SHOWN)."""
    variants = comp["variants"]
    finished = [v for v in variants if v["status"] == "finished"]
    rest = [f"{v['name']} ({v['status']})" for v in variants if v["status"] != "finished"]
    line = f"experiment {comp['experiment']}: {len(variants)} variants, {len(finished)} finished"
    if len(rest) > SHOWN:
        rest = rest[:SHOWN] + [f"{len(rest) - SHOWN} more"]
    return line + (f"; not finished: {', '.join(rest)}" if rest else "")


# --- files ------------------------------------------------------------------------------------


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[_csv_value(v) for v in row] for row in rows])


def write_group_csv(comp: dict, path: Path) -> None:
    """comparison.csv: one row per group, NAME_mean and NAME_std at full precision (empty: none finished)."""
    groups = comp["groups"]
    keys = [k for k in _param_keys(comp["variants"], comp["axes"]) if k != SEED_KEY]
    names = list(groups[0]["mean"]) if groups else list(GROUPED)
    stats = [(n, s) for n in names for s in ("mean", "std")]
    header = ["group", *keys, "variants", "n", "metric", *(f"{n}_{s}" for n, s in stats)]
    rows = [[g["group"], *(g["params"].get(k) for k in keys), g["variants"], g["n"], g["metric"],
             *(g[s][n] for n, s in stats)] for g in groups]  # fmt: skip
    _write_csv(path, header, rows)


def write_variant_csv(comp: dict, path: Path) -> None:
    """variants.csv: one row per variant with its params, status and numbers at full precision (empty: none)."""
    variants = comp["variants"]
    keys = [k for k in _param_keys(variants, comp["axes"]) if k != SEED_KEY]  # the seed has its own column
    scores = _score_names(name for v in variants for name in v["scores"])
    header = ["name", "group", "seed", "family", "status", "dir", *keys, "metric", *NUMBERS, *scores]
    rows = [[v["name"], v["group"], v["seed"], v["family"], v["status"], v["dir"], *(v["params"].get(k) for k in keys),
             v["metric"], *(v["numbers"][n] for n in NUMBERS), *(v["scores"].get(s) for s in scores)]
            for v in variants]  # fmt: skip
    _write_csv(path, header, rows)


def _line_label(params: dict) -> str:
    """A line of the plot: the method, then the other settings as short=value (memory.scorer -> scorer=...)."""
    shorts = _short_names(list(params))
    parts = [str(v) if k == METHOD_KEY else f"{shorts[k]}={v}" for k, v in params.items()]
    return " ".join(parts) or "all"


def plot_lines(groups: list[dict]) -> dict[str, list[tuple[float, float, float]]]:
    """Label -> the (memory bytes, final average accuracy, std) points of its finished groups, by bytes; a line is
    the groups whose params agree but for the budget (memory.budget)."""
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for g in groups:
        label = _line_label({k: v for k, v in g["params"].items() if k != BUDGET_KEY})
        x, y = g["mean"]["memory_bytes"], g["mean"]["final_average_accuracy"]
        points = lines.setdefault(label, [])
        if x is not None and y is not None:
            points.append((x, y, g["std"]["final_average_accuracy"] or 0.0))
    return {label: sorted(points) for label, points in lines.items() if points}


def accuracy_vs_bytes_figure(comp: dict):
    """Final average accuracy (%; a score that is no share, e.g. CIDEr-D, as is) against the replay memory's bytes on
    disk, one line per method with error bars (std over seeds); a group at 0 bytes (no memory) is a dashed horizontal
    reference; log x when the largest bytes exceed 20x the smallest."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    share = all(_is_share(g["metric"]) for g in comp["groups"])
    scale = 100.0 if share else 1.0
    lines = plot_lines(comp["groups"])
    positive = [x for points in lines.values() for x, _, _ in points if x > 0]
    for i, (label, points) in enumerate(lines.items()):
        color = f"C{i % 10}"
        drawn = [p for p in points if p[0] > 0]
        if drawn:
            xs, ys, es = zip(*drawn)
            ax.errorbar(xs, [y * scale for y in ys], yerr=[e * scale for e in es], marker="o", capsize=3,
                        color=color, label=label)  # fmt: skip
        for _, y, e in (p for p in points if p[0] <= 0):
            ax.axhline(y * scale, linestyle="--", color=color, label=f"{label} (0 bytes)")
            if e:
                ax.axhspan((y - e) * scale, (y + e) * scale, color=color, alpha=0.1)
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
    if not lines:
        ax.text(0.5, 0.5, "no finished variants", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("replay memory on disk after the last task (bytes)")
    ax.set_ylabel("final average accuracy (%)" if share else "final average score")
    ax.set_title(f"{comp['experiment']}: accuracy vs memory (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def render_html(comp: dict, plot: Path) -> str:
    """report.html: the group table, the plot (a data URI) and the variants, on one self-contained page."""
    header, rows, _ = table_cells(comp)
    shown = ("final_average_accuracy", "memory_bytes", "total_wall_s")
    share = all(_is_share(v["metric"]) for v in comp["variants"])
    variant_header = ["variant", "status", "seed", *(_header(n, share) for n in shown)]
    variant_cells = [[v["name"], v["status"], MISSING if v["seed"] is None else v["seed"],
                      *(_cell(n, v["numbers"][n], None, v["metric"], not share) for n in shown)]
                     for v in comp["variants"]]  # fmt: skip
    sections = [
        f"<h1>Experiment {html.escape(comp['experiment'])}</h1>",
        f"<p>{html.escape(status_line(comp))}. Mean ± std over seeds (n: finished seeds); accuracies in %.</p>",
        "<h2>Comparison</h2>" + table(header, rows),
        "<h2>Accuracy vs memory bytes</h2>" + img(plot, "accuracy vs memory bytes"),
        "<h2>Variants</h2>" + table(variant_header, variant_cells),
    ]  # fmt: skip
    return page(f"tokenforge experiment {comp['experiment']}", sections, STYLE + "img{max-width:100%}")


def write_comparison(folder: str | Path, out: str | Path) -> dict:
    """Write comparison.csv, variants.csv, comparison.md, comparison.json, accuracy_vs_bytes.png and report.html of
    the experiment in `folder` into `out` (each file atomically); returns the comparison."""
    comp = comparison(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_group_csv(comp, out / "comparison.csv")
    write_variant_csv(comp, out / "variants.csv")
    note = "Mean ± std over seeds (n: finished seeds; -: none finished)."
    with atomic_file(out / "comparison.md") as tmp:
        tmp.write_text(f"# {status_line(comp)}\n\n{note}\n\n{markdown_table(comp)}\n")
    with atomic_file(out / "comparison.json") as tmp:
        tmp.write_text(json.dumps(comp, indent=2) + "\n")
    buffer = io.BytesIO()
    accuracy_vs_bytes_figure(comp).savefig(buffer, format="png", metadata={"Software": None})
    with atomic_file(out / PLOT) as tmp:
        tmp.write_bytes(buffer.getvalue())
    with atomic_file(out / "report.html") as tmp:
        tmp.write_text(render_html(comp, out / PLOT), encoding="utf-8")
    log.info("wrote the comparison of %s (%d variants) into %s", comp["experiment"], len(comp["variants"]), out)
    return comp
