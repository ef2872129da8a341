"""Sequential VQA with BLIP on scene tokens: core-token memory against a coreset, no memory and joint training.

    .venv/bin/python benchmarks/vqa_sequence.py                 # 3 seeds, every memory (~45 min on 2 cores)
    .venv/bin/python benchmarks/vqa_sequence.py --seeds 0 --memories coretokens-atman none   # a quick look
    .venv/bin/python benchmarks/vqa_sequence.py --memories coretokens-atman coreset none joint  # what the README shows

The setting is config/vqa.yaml's, run stage by stage through the CLI (in-process, one run at a time): the `scenes`
source (600 images of 24x24, procedural CLEVR-like scenes, five question families), a VQ tokenizer (64 codes,
12x12 grids), and a sequence of five tasks, one per question family, in an order shuffled by the seed; a small BLIP
(width 64, 1 vision + 1 text layer) trained from scratch, 20 epochs of batch 16 per task at a peak learning rate
of 3e-4. The memories, all at the same byte
budget on disk (10% of the train token file, which holds the questions and answers too):

- `coretokens-atman`: items drawn at random, each keeping its 25% most relevant tokens by AtMan for its answer,
  with its question and answer (the paper's recipe on our tokens);
- `coretokens-random`: the same with random tokens (the control);
- `coreset`: whole token grids of random items with their text;
- `none`: fine-tuning, the lower bound; `joint`: every task so far, the upper bound (no memory).

Reported per memory over the seeds: final average VQA accuracy (exact match: one answer per question), average
forgetting, backward transfer, the items the memory holds after the last task, and its bytes. Every setting was fixed
before the first run. Writes benchmarks/results/vqa-sequence.json and .md. Runs of an earlier invocation are kept
(their folders are reused) unless --fresh.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "vqa-sequence"
RESULTS = HERE / "results"

SCENES = ["--source", "scenes", "--scenes-count", "600", "--scenes-size", "24"]
TOKENIZER = ["--codebook-size", "64", "--code-dim", "16", "--hidden-dim", "64", "--downsample", "2", "--epochs", "30"]
TRAIN = ["--epochs", "20", "--batch-size", "16", "--lr", "0.0003", "--embed-dim", "64", "--depth", "1", "--num-heads", "4",
         "--mlp-ratio", "2.0", "--text-max-len", "16", "--memory-budget", "10%", "--memory-token-fraction", "0.25"]  # fmt: skip
MEMORIES = {
    "coretokens-atman": ["--memory-method", "coretokenset", "--memory-scorer", "atman"],
    "coretokens-random": ["--memory-method", "coretokenset", "--memory-scorer", "random"],
    "coreset": ["--memory-method", "coreset"],
    "none": ["--memory-method", "none"],
    "joint": ["--memory-method", "joint"],
}
TASKS = 5


def cli(*args: str) -> None:
    from tokenforge.cli import main

    code = main([*map(str, args), "-q"])
    if code:
        raise SystemExit(f"tokenforge {args[0]} failed ({code})")


def prepare(seeds: list[int]) -> None:
    """Shards, tokenizer and tokens once; one split (task order) per seed."""
    if not (WORK / "tokens" / "stats.json").is_file():
        cli("shard", *SCENES, "--out", WORK / "shard")
        cli("tokenizer", "--shards", WORK / "shard", "--out", WORK / "tokenizer", *TOKENIZER, "--threads", "2")
        cli("tokenize", "--shards", WORK / "shard", "--tokenizer", WORK / "tokenizer", "--out", WORK / "tokens")
    for seed in seeds:
        if not (WORK / f"split-{seed}" / "tasks.json").is_file():
            cli("split", "--family", "vqa", "--tokens", WORK / "tokens" / "train.parquet", "--out", WORK / f"split-{seed}",
                "--tasks", TASKS, "--seed", seed)  # fmt: skip


def one_run(memory: str, seed: int) -> dict:
    run = WORK / "runs" / f"{memory}-seed{seed}"
    done = run / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    rows, stats = [], []
    for t in range(TASKS):
        out = run / f"task-{t}"
        previous = ["--previous", run / f"task-{t - 1}"] if t else []
        if not (out / "stats.json").is_file():
            cli("train", "--family", "vqa", "--tokens", WORK / "tokens" / "train.parquet", "--tokenizer", WORK / "tokenizer",
                "--split", WORK / f"split-{seed}", "--task", t, "--out", out, *previous, *TRAIN, *MEMORIES[memory],
                "--seed", seed, "--threads", "2")  # fmt: skip
        cli("evaluate", "--family", "vqa", "--model", out, "--tokens", WORK / "tokens" / "test.parquet",
            "--split", WORK / f"split-{seed}", "--task", t, "--out", run / f"evaluate-{t}.json", "--generate-tokens", "4")  # fmt: skip
        rows.append(json.loads((run / f"evaluate-{t}.json").read_text())["accuracy"])
        stats.append(json.loads((out / "stats.json").read_text()))
    from tokenforge.report.metrics import summarize

    summary = summarize(rows)
    result = {
        "memory": memory, "seed": seed, "accuracy_matrix": summary["accuracy_matrix"],
        "final_average_accuracy": summary["final_average_accuracy"], "average_forgetting": summary["average_forgetting"],
        "backward_transfer": summary["backward_transfer"], "memory_items": stats[-1]["memory_samples"],
        "memory_tokens_per_item": stats[-1]["memory_tokens_per_sample"], "memory_bytes": stats[-1]["memory_bytes"],
        "memory_budget_bytes": stats[-1]["memory_budget_bytes"], "train_samples_per_s": statistics.mean(s["samples_per_s"] for s in stats),
        "memory_build_s": sum(s["memory_build_s"] for s in stats), "wall_s": time.perf_counter() - start,
    }  # fmt: skip
    done.write_text(json.dumps(result, indent=2))
    return result


def aggregate(results: list[dict]) -> list[dict]:
    rows = []
    for memory in MEMORIES:
        runs = sorted((r for r in results if r["memory"] == memory), key=lambda r: r["seed"])
        if not runs:
            continue

        def stat(key):
            values = [r[key] for r in runs]
            return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

        rows.append({"memory": memory, "seeds": [r["seed"] for r in runs], **{
            k: stat(k) for k in ("final_average_accuracy", "average_forgetting", "backward_transfer", "memory_items",
                                 "memory_bytes", "train_samples_per_s")}})  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| memory | seeds | final avg. VQA accuracy | forgetting | backward transfer | items kept | memory bytes | train samples/s |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def pm(value, pct=True, digits=1):
        m, s = value
        return f"{100 * m:.{digits}f} ± {100 * s:.{digits}f}" if pct else f"{m:,.0f} ± {s:,.0f}"

    for r in rows:
        lines.append(f"| {r['memory']} | {', '.join(map(str, r['seeds']))} | {pm(r['final_average_accuracy'])} | {pm(r['average_forgetting'])} | "
                     f"{pm(r['backward_transfer'])} | {pm(r['memory_items'], False)} | {pm(r['memory_bytes'], False)} | "
                     f"{pm(r['train_samples_per_s'], False)} |")  # fmt: skip
    return "\n".join(lines) + "\n\nMean ± standard deviation over the seeds of each row.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--memories", nargs="+", choices=list(MEMORIES), default=list(MEMORIES))
    parser.add_argument("--fresh", action="store_true", help="remove earlier runs (the data is kept)")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.fresh:
        shutil.rmtree(WORK / "runs", ignore_errors=True)
    prepare(args.seeds)
    results = []
    for seed in args.seeds:
        for memory in args.memories:
            print(f"{memory} seed {seed}", flush=True)
            results.append(one_run(memory, seed))
    earlier = WORK / "runs"
    every = {(r["memory"], r["seed"]): r for r in results}
    for path in sorted(earlier.glob("*/result.json")):  # runs of an earlier invocation stay in the table
        r = json.loads(path.read_text())
        every.setdefault((r["memory"], r["seed"]), r)
    rows = aggregate(list(every.values()))
    meta = {"command": " ".join(sys.argv), "platform": platform.platform(), "python": platform.python_version(),
            "scenes": SCENES, "tokenizer": TOKENIZER, "train": TRAIN, "memories": MEMORIES, "tasks": TASKS}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vqa-sequence.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": list(every.values())}, indent=2))
    table = markdown(rows)
    (RESULTS / "vqa-sequence.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
