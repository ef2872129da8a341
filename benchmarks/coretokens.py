"""Core tokensets against coresets at the same bytes: final average accuracy and forgetting per memory budget.

    .venv/bin/python benchmarks/coretokens.py                      # everything (about an hour on 2 CPU cores)
    .venv/bin/python benchmarks/coretokens.py --only digits --seeds 0 --budgets 1 5   # a quick look
    .venv/bin/python benchmarks/coretokens.py --table-only         # redo table and plot from the JSON

For each dataset it runs the real stages once (`tokenforge shard/tokenizer/tokenize`), then for each
seed a class split and, for every memory method, scorer and budget, the whole task sequence with
`tokenforge train` and `tokenforge evaluate` (the pipeline's own code, called in-process, two runs at a
time, one thread each). Budgets are shares of the train token file's bytes on disk; the memory's
bytes are its file's bytes on disk after the last task. A budget too small for one sample per class is
reported as such, with the minimum the trainer states. Finished runs are kept in the work folder and
not redone. Writes benchmarks/results/coretokens.json, coretokens.md and coretokens.png.

Pretrained starts (`--pretrains`, `tokenforge pretrain`, one per dataset and seed, reused): `scratch`; `sup-other`
(supervised on another dataset's train images, encoded by this dataset's tokenizer: Fashion-MNIST for digits,
digits for Fashion-MNIST: disjoint classes); `mtm-other` (masked-token modelling on the same other images, no
labels); `mtm-tasks` (masked-token modelling on the sequence's own train images, labels unused: NOT disjoint,
the model has seen later tasks' images); `fill-mtm-tasks` (a random start, only the MTM fill from mtm-tasks).
The `mtm` replay fills non-kept tokens with the pretrained MTM model's predictions (runs only where there is one).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

# Both datasets on an 8x8 token grid (64 tokens per image), so "a few tokens per sample" means something.
DATASETS = {
    "digits": {
        "title": "Split-digits (10 classes, 5 tasks)",
        "shard": ["--source", "digits", "--image-size", "16"],
        "tokenizer": ["--codebook-size", "64", "--code-dim", "16", "--downsample", "2", "--epochs", "20"],
        "tasks": 5,
        "other": ["--data", "idx:/usr/share/datasets/fashion-mnist", "--max-per-class", "500"],  # 5,000 images
    },
    "shapes": {
        "title": "Split-shapes (20 classes, 5 tasks)",
        "shard": ["--source", "shapes", "--shapes-count", "2000", "--shapes-classes", "20", "--shapes-size", "32"],
        "tokenizer": ["--codebook-size", "128", "--code-dim", "16", "--downsample", "4", "--epochs", "10"],
        "tasks": 5,
    },
    # The real Fashion-MNIST (Debian's dataset-fashion-mnist) at the paper's grid: 28x28 / 2 = 14x14 = 196 tokens.
    # The first 300 train and 300 test images per class: a 2-core CPU runs the grid in a session.
    "fashion": {
        "title": "Split-FashionMNIST (10 classes, 5 tasks, 14x14 tokens, 300 train images per class)",
        "shard": ["--source", "idx:/usr/share/datasets/fashion-mnist", "--max-per-class", "300"],
        "tokenizer": ["--codebook-size", "128", "--code-dim", "16", "--downsample", "2", "--epochs", "10"],
        "tasks": 5,
        "other": ["--data", "digits"],  # sklearn's 1,797 digits, resized to 28x28
    },
}
# Replay variants (continual/replay.py), each a set of flags on top of TRAIN.
REPLAYS = {
    "subset": [],  # kept tokens only; current batches as random subsets of a memory row's length (from task 1)
    "fill": ["--memory-view", "fill", "--memory-fill", "frequent"],  # whole grids, the rest the most frequent code
    "mask": ["--memory-view", "fill", "--memory-fill", "mask"],  # whole grids, the rest a learned mask embedding
    "token": ["--input-dropout-mode", "token", "--input-dropout", "0.9"],  # subsets; per-token dropout from task 0
    # the paper's recipe: whole grids blanked, per-token input dropout 0.9 from task 0 on, memory once per epoch,
    # head re-initialised every task
    "paper": ["--memory-view", "fill", "--memory-fill", "frequent", "--input-dropout-mode", "token",
              "--input-dropout", "0.9", "--memory-schedule", "epoch", "--head", "reset"],
    "mtm": ["--memory-view", "fill", "--memory-fill", "mtm"],  # whole grids, the rest predicted by a pretrained MTM model
}
# Pretrained starts: which pretraining (PRETRAININGS) a run uses, and whether task 0 starts from it (else only the
# MTM fill reads it). Pretraining uses TRAIN's architecture and the SeiT++ mask-ratio defaults (not tuned here).
PRETRAINS = {
    "scratch": None,
    "sup-other": {"pretraining": "sup-other", "init": True},
    "mtm-other": {"pretraining": "mtm-other", "init": True},
    "mtm-tasks": {"pretraining": "mtm-tasks", "init": True},
    "fill-mtm-tasks": {"pretraining": "mtm-tasks", "init": False},
}
PRETRAININGS = {  # "OTHER" is the dataset's other source (DATASETS[...]["other"])
    "sup-other": ["--mode", "supervised", "OTHER", "--epochs", "30"],
    "mtm-other": ["--mode", "mtm", "OTHER", "--epochs", "30"],
    "mtm-tasks": ["--mode", "mtm", "--data", "tasks", "--epochs", "30"],
}
BUDGETS = [0.5, 1, 2, 5, 10]  # percent of the train token bytes
SCORERS = ["rollout", "chefer", "gradcam", "atman", "random"]
# A small ViT trained long enough per task: with depth 4 and 8 epochs, a new 2-class task after fine-tuning
# sometimes stayed at chance (a plateau of ~150-200 steps); depth 2 with 16 epochs of batch 16 learns each task.
TRAIN = ["--epochs", "16", "--embed-dim", "48", "--depth", "2", "--num-heads", "4", "--batch-size", "16", "--lr", "1e-3",
         "--input-dropout", "1.0"]
TOKEN_FRACTION = 0.125  # coretokenset keeps 8 of 64 tokens per sample (16 did not fit one sample per class in 1% on digits)


def variants(budgets: list[float], replays: list[str], scorers: list[str], coreset_only: list[float] = (),
             pretrain: str = "scratch") -> list[dict]:
    """Every run of one dataset, seed and pretrained start: the baselines, the coreset at every budget, then each
    replay variant x budget x scorer of the core tokenset (not at the `coreset_only` budgets). The mtm replay runs
    only from a start with an MTM model; a start used only for the fill has no baselines of its own."""
    spec = PRETRAINS[pretrain]
    has_mtm = spec is not None and PRETRAININGS[spec["pretraining"]][1] == "mtm"
    starts = spec is None or spec["init"]  # task 0 starts from it (else only the fill reads it)
    replays = [r for r in replays if (r != "mtm" and starts) or (r == "mtm" and has_mtm)]
    out = [{"method": "none"}, {"method": "joint"}] if starts else []
    for b in sorted({*budgets, *coreset_only}):
        if starts:
            out.append({"method": "coreset", "budget": b, "selection": "class_balanced"})
        if b not in budgets:
            continue
        for r in replays:
            for s in scorers:
                out.append({"method": "coretokenset", "budget": b, "scorer": s, "selection": "class_balanced", "replay": r})
    return [{**v, "pretrain": pretrain} if pretrain != "scratch" else v for v in out]


def label(v: dict) -> str:
    parts = [v["method"]]
    if v["method"] == "coreset":
        parts.append(v["selection"])
    elif "scorer" in v:
        parts.append(v["scorer"])
    if v["method"] == "coretokenset":
        parts.append(f"{100 * v.get('fraction', TOKEN_FRACTION):g}% tokens")
    if v.get("replay", "subset") != "subset":
        parts.append(f"replay {v['replay']}")
    return " / ".join(parts) + suffix(v.get("pretrain", "scratch"))


def suffix(pretrain: str) -> str:
    return "" if pretrain == "scratch" else f" / from {pretrain}"


def run_id(v: dict, seed: int) -> str:
    fraction = f"f{v.get('fraction', TOKEN_FRACTION)}" if v["method"] == "coretokenset" else ""
    replay = v.get("replay", "subset")
    parts = [v["method"], v.get("selection", ""), v.get("scorer", ""), fraction, "" if replay == "subset" else replay,
             "" if v.get("pretrain", "scratch") == "scratch" else v["pretrain"], v.get("tag", "")]
    return "-".join([*parts, str(v.get("budget", "")), f"s{seed}"]).replace("--", "-").replace("--", "-")


def stage(*args: str) -> None:
    subprocess.run([str(BIN / "tokenforge"), *args, "-q"], check=True)


def prepare(name: str, work: Path, seeds: list[int]) -> Path:
    d = work / name
    spec = DATASETS[name]
    if not (d / "tokens" / "train.parquet").is_file():
        stage("shard", *spec["shard"], "--out", str(d / "shard"))
        stage("tokenizer", "--shards", str(d / "shard"), "--out", str(d / "tokenizer"), *spec["tokenizer"], "--threads", "2")
        stage("tokenize", "--shards", str(d / "shard"), "--tokenizer", str(d / "tokenizer"), "--out", str(d / "tokens"))
    for seed in seeds:
        if not (d / f"split-{seed}" / "tasks.json").is_file():
            stage("split", "--classes", str(d / "shard" / "classes.json"), "--out", str(d / f"split-{seed}"),
                  "--tasks", str(spec["tasks"]), "--seed", str(seed))
    return d


def pretraining_dir(d: Path, pretrain: str, seed: int) -> Path | None:
    spec = PRETRAINS[pretrain]
    return None if spec is None else d / "pretrain" / f"{spec['pretraining']}-s{seed}"


def pretrain(name: str, d: Path, pretraining: str, seed: int) -> str:
    """One pretraining (`tokenforge pretrain`), reused when done; returns its stats line."""
    out = d / "pretrain" / f"{pretraining}-s{seed}"
    if not (out / "stats.json").is_file():
        args = [a for part in PRETRAININGS[pretraining] for a in (DATASETS[name]["other"] if part == "OTHER" else [part])]
        arch = TRAIN[TRAIN.index("--embed-dim"):TRAIN.index("--batch-size")]  # embed dim, depth, heads
        stage("pretrain", *args, *arch, "--tokens", str(d / "tokens" / "train.parquet"), "--split", str(d / f"split-{seed}"),
              "--tokenizer", str(d / "tokenizer"), "--out", str(out), "--seed", str(seed), "--threads", "2")
    stats = json.loads((out / "stats.json").read_text())
    return f"{name} {pretraining} seed {seed}: " + ", ".join(
        f"{k} {stats[k]:.3f}" for k in ("final_accuracy", "final_fill_accuracy", "frequent_code_accuracy", "wall_s") if k in stats)


def one_run(d: str, v: dict, seed: int, tasks: int) -> dict:
    """The whole task sequence for one variant, in this process; the result is also kept in the run folder."""
    import torch

    from tokenforge.cli import main
    from tokenforge.report.metrics import summarize

    torch.set_num_threads(1)
    d = Path(d)
    out = d / "runs" / run_id(v, seed)
    if (out / "result.json").is_file():
        return {**json.loads((out / "result.json").read_text()), "label": label(v)}
    mem = ["--memory-method", v["method"], "--memory-token-fraction", str(v.get("fraction", TOKEN_FRACTION))]
    mem += ["--memory-budget", f"{v['budget']}%" if "budget" in v else "none"]
    if "budget" not in v:
        mem += ["--memory-samples-per-class", "1"]  # unused: none and joint keep nothing
    mem += ["--memory-selection", v.get("selection", "class_balanced"), "--memory-scorer", v.get("scorer", "random")]
    split = ["--split", str(d / f"split-{seed}")]
    start_from = pretraining_dir(d, v.get("pretrain", "scratch"), seed)
    if start_from is not None and PRETRAINS[v["pretrain"]]["init"]:
        mem += ["--init", str(start_from)]  # task 0 only; later tasks ignore it
    if v.get("replay") == "mtm":
        mem += ["--fill-model", str(start_from)]
    rows, stats, start = [], [], time.perf_counter()
    result = {**v, "label": label(v), "seed": seed, "token_bytes": (d / "tokens" / "train.parquet").stat().st_size}
    for t in range(tasks):
        args = ["train", "--tokens", str(d / "tokens" / "train.parquet"), "--tokenizer", str(d / "tokenizer"), *split, "--task", str(t), "--out", str(out / f"task-{t}")]
        if t:
            args += ["--previous", str(out / f"task-{t - 1}")]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(args + TRAIN + REPLAYS[v.get("replay", "subset")] + mem + list(v.get("flags", ()))
                      + ["--seed", str(seed), "--threads", "1", "-q"])
        if rc:
            message = err.getvalue().strip().splitlines()[-1]
            found = re.search(r"minimum is about ([\d,]+) bytes", message)
            if not found:
                raise RuntimeError(f"{out}: {message}")
            result.update(infeasible=True, minimum_bytes=int(found.group(1).replace(",", "")), error=message)
            break
        rc = main(["evaluate", "--model", str(out / f"task-{t}"), "--tokens", str(d / "tokens" / "test.parquet"), *split,
                   "--task", str(t), "--out", str(out / f"eval-{t}.json"), "--threads", "1", "-q"])
        if rc:
            raise RuntimeError(f"{out}: evaluate task {t} failed")
        rows.append(json.loads((out / f"eval-{t}.json").read_text())["accuracy"])
        stats.append(json.loads((out / f"task-{t}" / "stats.json").read_text()))
    if not result.get("infeasible"):
        summary = summarize(rows)
        result.update(
            infeasible=False,
            accuracy_matrix=rows,
            final_average_accuracy=summary["final_average_accuracy"],
            forgetting=summary["average_forgetting"],
            memory_bytes=[s["memory_bytes"] for s in stats],
            budget_bytes=stats[-1]["memory_budget_bytes"],
            memory_samples=stats[-1]["memory_samples"],
            tokens_per_sample=stats[-1]["memory_tokens_per_sample"],
            memory_build_s=sum(s["memory_build_s"] for s in stats),
            shortcut_auc=[s.get("shortcut_auc") for s in stats],
            samples_per_s=[s["samples_per_s"] for s in stats],
            peak_rss_mb=max(s["peak_rss_mb"] for s in stats),
        )
    result["wall_s"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# --- aggregation, table and plot --------------------------------------------------------------------


def aggregate(results: list[dict]) -> list[dict]:
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["label"], r.get("budget")), []).append(r)
    rows = []
    for (dataset, lab, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        ok = [r for r in rs if not r["infeasible"]]
        row = {"dataset": dataset, "label": lab, "method": rs[0]["method"], "budget_percent": budget, "seeds": len(rs)}
        if ok:
            acc = np.array([r["final_average_accuracy"] for r in ok])
            fgt = np.array([r["forgetting"] for r in ok])
            row.update(
                runs=len(ok),
                accuracy_mean=float(acc.mean()),
                accuracy_std=float(acc.std()),
                forgetting_mean=float(fgt.mean()),
                forgetting_std=float(fgt.std()),
                memory_bytes=float(np.mean([r["memory_bytes"][-1] for r in ok])),
                budget_bytes=ok[0]["budget_bytes"],
                memory_samples=float(np.mean([r["memory_samples"] for r in ok])),
                tokens_per_sample=ok[0]["tokens_per_sample"],
                shortcut_auc=_mean_auc(ok),
            )
        else:
            row.update(runs=0, minimum_bytes=max(r["minimum_bytes"] for r in rs))
        rows.append(row)
    return rows


def _mean_auc(runs: list[dict]) -> float | None:
    """The shortcut probe's AUC after tasks 1.. (task 0 has replayed nothing yet), averaged over tasks and seeds."""
    import numpy as np

    values = [a for r in runs for a in (r.get("shortcut_auc") or [])[1:] if a is not None]
    return float(np.mean(values)) if values else None


BASE_ORDER = ["none", "joint", "coreset / class_balanced", "coreset / herding", "coreset / gradient", "coretokens / chefer"] + [
    f"coretokenset / {s} / 12.5% tokens{'' if r == 'subset' else f' / replay {r}'}" for r in REPLAYS for s in SCORERS] + [
    f"coretokenset / {s} / 50% tokens" for s in ("chefer", "atman", "random")]
ORDER = [lab + suffix(p) for p in PRETRAINS for lab in BASE_ORDER]


def markdown(rows: list[dict], budgets: list[float]) -> str:
    out = []
    for dataset in sorted({r["dataset"] for r in rows}):
        rs = [r for r in rows if r["dataset"] == dataset]
        token_bytes = next((r["budget_bytes"] / (r["budget_percent"] / 100) for r in rs if r.get("budget_bytes")), None)
        out.append(f"**{DATASETS.get(dataset, {}).get('title', dataset)}**: final average accuracy % (mean ± std over "
                   f"{max(r['seeds'] for r in rs)} seeds) · forgetting % · memory samples × tokens. Budgets are shares of "
                   f"the train token file ({token_bytes:,.0f} bytes).\n" if token_bytes else f"**{dataset}**\n")
        head = "| method / selection or scorer | " + " | ".join(
            f"{b:g}% ({int(b / 100 * token_bytes):,} B)" if token_bytes else f"{b:g}%" for b in budgets) + " |"
        out += [head, "|---" * (len(budgets) + 1) + "|"]
        labels = [lab for lab in ORDER if any(r["label"] == lab for r in rs)]
        for lab in labels:
            cells = []
            for b in budgets:
                r = next((r for r in rs if r["label"] == lab and (r["budget_percent"] in (b, None))), None)
                cells.append(_cell(r))
            if lab.split(" / ")[0] in ("none", "joint"):
                cells = [_cell(next(r for r in rs if r["label"] == lab))] + ["″"] * (len(budgets) - 1)
            out.append(f"| {lab} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    if not r["runs"]:
        return f"below minimum ({r['minimum_bytes']:,} B)"
    size = f" · {r['memory_samples']:.0f}×{r['tokens_per_sample']}" if r.get("tokens_per_sample") else ""
    auc = f" · AUC {r['shortcut_auc']:.2f}" if r.get("shortcut_auc") is not None else ""
    return f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} · F {100 * r['forgetting_mean']:.1f}{size}{auc}"


def goal_lines(rows: list[dict]) -> list[str]:
    """The issue's questions, per dataset and start: does a core tokenset at 1% reach the coreset at 2% (the paper's
    lower claim) or 5% from the same start, and does an attribution scorer beat random tokens (by 3 points, the
    goal) under the same replay?"""
    lines = []
    for dataset in sorted({r["dataset"] for r in rows}):
        for p in PRETRAINS:
            rs = [r for r in rows if r["dataset"] == dataset and r["runs"] and r["label"].endswith(suffix(p))
                  and (p != "scratch" or " / from " not in r["label"])]
            if not rs:
                continue
            where = f"{dataset}, {'from scratch' if p == 'scratch' else f'from {p}'}"
            base = "scratch" if PRETRAINS[p] is not None and not PRETRAINS[p]["init"] else p  # fill only: scratch's coreset
            coreset = {r["budget_percent"]: r["accuracy_mean"] for r in rows if r["dataset"] == dataset and r["runs"]
                       and r["label"] == "coreset / class_balanced" + suffix(base)}
            best = max((r for r in rs if r["method"] == "coretokenset" and r["budget_percent"] == 1),
                       key=lambda r: r["accuracy_mean"], default=None)
            if best is not None:
                verdicts = [f"{'reaches' if best['accuracy_mean'] >= coreset[b] else 'below'} the coreset at {b:g}% "
                            f"({100 * coreset[b]:.1f}%)" for b in (2, 5) if b in coreset]
                lines.append(f"- {where}: best core tokenset at 1% ({best['label']}) {100 * best['accuracy_mean']:.1f}%: "
                             + ("; ".join(verdicts) or "no coreset at 2% or 5% measured") + ".")
            beats = False
            none = next((r["accuracy_mean"] for r in rows if r["dataset"] == dataset and r["runs"]
                         and r["label"] == "none" + suffix(base)), None)
            for r in rs:
                if r["method"] != "coretokenset" or "/ random /" in r["label"]:
                    continue
                control = next((c for c in rs if c["label"] == r["label"].replace(f"/ {r['label'].split(' / ')[1]} /", "/ random /")
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


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets) + 3, 4.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rs = [r for r in rows if r["dataset"] == dataset]
        for i, lab in enumerate(ORDER):
            pts = sorted((r for r in rs if r["label"] == lab and r["runs"] and r["budget_percent"]), key=lambda r: r["memory_bytes"])
            if not pts:
                continue
            style = "-o" if lab.startswith("coretokenset") else "--s" if lab.startswith("coreset") else ":^"
            ax.errorbar([r["memory_bytes"] for r in pts], [100 * r["accuracy_mean"] for r in pts],
                        yerr=[100 * r["accuracy_std"] for r in pts], fmt=style, ms=4, capsize=2, label=lab,
                        color=plt.cm.tab20(i % 20))  # one colour per series: the default cycle repeats after 10
        for lab, color in (("none", "grey"), ("joint", "black")):
            r = next((r for r in rs if r["label"] == lab and r["runs"]), None)
            if r:
                ax.axhline(100 * r["accuracy_mean"], color=color, ls="-.", lw=1, label=f"{lab} (no memory)" if lab == "none" else "joint (upper bound)")
        ax.set_xscale("log")
        ax.set_xlabel("memory bytes on disk after the last task")
        ax.set_ylabel("final average accuracy (%)")
        ax.set_title(DATASETS.get(dataset, {}).get("title", dataset))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(results: list[dict], budgets: list[float], out: Path, meta: dict) -> str:
    rows = aggregate(results)
    table = markdown(rows, budgets) + "\n" + "\n".join(goal_lines(rows)) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "coretokens.json").write_text(json.dumps({"meta": meta, "summary": rows, "runs": results}, indent=2) + "\n")
    (out / "coretokens.md").write_text(table)
    plot(rows, out / "coretokens.png")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(DATASETS), default=list(DATASETS), help="datasets to run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (class order, init, memory)")
    parser.add_argument("--budgets", nargs="+", type=float, default=BUDGETS, help="budgets in %% of the train token bytes")
    parser.add_argument("--coreset-budgets", nargs="+", type=float, default=[], help="budgets where only the coreset runs")
    parser.add_argument("--replays", nargs="+", choices=list(REPLAYS), default=list(REPLAYS), help="replay variants of the core tokenset")
    parser.add_argument("--pretrains", nargs="+", choices=list(PRETRAINS), default=["scratch"], help="starts of task 0 (module doc)")
    parser.add_argument("--scorers", nargs="+", choices=SCORERS, default=["chefer", "atman", "rollout", "random"], help="token scorers")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "coretokens", help="scratch folder; finished runs are reused")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where coretokens.json/.md/.png go")
    parser.add_argument("--table-only", action="store_true", help="redo the table and plot from coretokens.json")
    parser.add_argument("--fresh", action="store_true", help="leave out the runs of an earlier coretokens.json that this "
                        "invocation did not run (default: keep them, so the map grows over invocations)")
    args = parser.parse_args()
    if args.table_only:
        saved = json.loads((args.out / "coretokens.json").read_text())
        budgets = saved["meta"].get("table_budgets") or sorted({*saved["meta"]["budgets"], *saved["meta"].get("coreset_budgets", [])})
        print(write_outputs(saved["runs"], budgets, args.out, saved["meta"]))
        return
    os.environ["TQDM_DISABLE"] = "1"
    start = time.perf_counter()
    jobs = []
    pretrained = []
    for name in args.only:
        d = prepare(name, args.work, args.seeds)
        for p in args.pretrains:
            if PRETRAINS[p] is not None:
                pretrained += [pretrain(name, d, PRETRAINS[p]["pretraining"], seed) for seed in args.seeds]
            jobs += [(str(d), v, seed, DATASETS[name]["tasks"], name) for seed in args.seeds
                     for v in variants(args.budgets, args.replays, args.scorers, args.coreset_budgets, p)]
    pretrained = list(dict.fromkeys(pretrained))
    print("\n".join(pretrained), flush=True)
    print(f"{len(jobs)} runs", flush=True)
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(one_run, d, v, seed, tasks): name for d, v, seed, tasks, name in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            try:
                r = {**fut.result(), "dataset": futures[fut]}
            except Exception as exc:  # one broken run must not lose the others; it is reported and left out
                print(f"[{i}/{len(jobs)}] FAILED: {exc}", flush=True)
                continue
            results.append(r)
            acc = "below minimum" if r["infeasible"] else f"{100 * r['final_average_accuracy']:.1f}%"
            print(f"[{i}/{len(jobs)}] {r['dataset']} {r['label']} {r.get('budget', '')} seed {r['seed']}: {acc} "
                  f"({r['wall_s']:.0f} s, {time.perf_counter() - start:.0f} s in all)", flush=True)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "seeds": args.seeds,
        "budgets": args.budgets,
        "coreset_budgets": args.coreset_budgets,
        "replays": {r: REPLAYS[r] for r in args.replays},
        "pretrains": {p: PRETRAINS[p] for p in args.pretrains},
        "pretrainings": PRETRAININGS,
        "pretrained": pretrained,
        "train": TRAIN,
        "token_fraction": TOKEN_FRACTION,
        "datasets": {n: DATASETS[n] for n in args.only},
        "wall_s": time.perf_counter() - start,
    }
    budgets = sorted({*args.budgets, *args.coreset_budgets})
    saved = args.out / "coretokens.json"
    if saved.is_file() and not args.fresh:  # earlier cells stay in the map
        old = json.loads(saved.read_text())
        done = {(r["dataset"], run_id(r, r["seed"])) for r in results}
        kept = [r for r in old["runs"] if (r["dataset"], run_id(r, r["seed"])) not in done]
        results += kept
        budgets = sorted({*budgets, *old["meta"]["budgets"], *old["meta"].get("coreset_budgets", [])})
        meta["earlier"] = {k: old["meta"][k] for k in ("seeds", "budgets", "coreset_budgets", "replays", "wall_s") if k in old["meta"]}
        meta["kept_earlier_runs"] = len(kept)
    meta["table_budgets"] = budgets
    print(write_outputs(results, budgets, args.out, meta))


if __name__ == "__main__":
    main()
