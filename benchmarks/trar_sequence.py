"""Routed attention spans (TRAR) in the continual sequence: the same task sequences with global and routed attention.

    .venv/bin/python benchmarks/trar_sequence.py                          # digits and Fashion-MNIST, 3 seeds
    .venv/bin/python benchmarks/trar_sequence.py --only digits --seeds 0  # a quick look (~3 min on 2 cores)

Runs of an earlier invocation stay in the table (the run folders are reused) unless `--fresh`.

benchmarks/trar.py measures the option on one task; this runs it where the project uses it: the whole class-incremental
sequence of benchmarks/coretokens.py (its datasets, token files, splits, ViT and training flags; 5 tasks; `tokenforge
train` and `evaluate` per task, in-process, two runs at a time with one thread each), once with `--attention global`
and once with `--attention routed` (orders 0-3, soft routing: the defaults), for each memory in `--memories`:
a coreset (whole samples) and a core tokenset (12.5% of each kept sample's tokens, Chefer scores, which read the
routed attention maps) at a share of the train token bytes. Both attentions run fresh in the same invocation, so their
samples/s share the machine's load. Reported per dataset, memory and attention over the seeds: final average accuracy,
average forgetting, training samples/s (mean over tasks), and the MB of tensors autograd saves for one training
forward of a batch of full grids through a trained model (activation memory, as benchmarks/toe.py measures it; the
peak RSS of a pool worker would mix the runs it did).
Writes benchmarks/results/trar-sequence.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import coretokens  # noqa: E402  (the sequence setting: datasets, TRAIN flags, one_run)

# name -> memory spec (coretokens variant fields); budgets are % of the train token bytes
MEMORIES = {
    "coreset-5": {"method": "coreset", "budget": 5.0, "selection": "class_balanced"},
    "coreset-2": {"method": "coreset", "budget": 2.0, "selection": "class_balanced"},
    "coretokenset-2": {"method": "coretokenset", "budget": 2.0, "scorer": "chefer", "selection": "class_balanced"},
    "none": {"method": "none"},
}
ATTENTIONS = ("global", "routed")


def variant(memory: str, attention: str) -> dict:
    return {**MEMORIES[memory], "memory": memory, "attention": attention, "tag": f"attn-{attention}",
            "flags": ["--attention", attention]}


def linked(src: Path, dst: Path, seeds: list[int]) -> Path:
    """A run folder of its own (fresh runs, fresh timings) over the coretokens dataset's shards, tokens and splits."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ["shard", "tokenizer", "tokens", *(f"split-{s}" for s in seeds)]:
        link = dst / name
        if not link.exists():
            link.symlink_to((src / name).resolve())
    return dst


def summarize(results: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["memory"], r["attention"]), []).append(r)
    rows = []
    for (dataset, memory, attention), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        acc = [100 * r["final_average_accuracy"] for r in rs]
        fgt = [100 * r["forgetting"] for r in rs]
        rate = [statistics.mean(r["samples_per_s"]) for r in rs]
        rows.append({
            "dataset": dataset, "memory": memory, "attention": attention, "seeds": [r["seed"] for r in rs],
            "accuracy": statistics.mean(acc), "accuracy_std": statistics.pstdev(acc), "per_seed": acc,
            "forgetting": statistics.mean(fgt), "samples_per_s": statistics.mean(rate),
            "saved_activation_mb": rs[0].get("saved_activation_mb"), "wall_s": statistics.mean(r["wall_s"] for r in rs),
        })  # fmt: skip
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    out = [f"TRAR in the class-incremental sequence (5 tasks), the ViT of benchmarks/coretokens.py "
           f"({' '.join(meta['train'])}), {meta['machine']}, runs two at a time with one thread each.", "",
           "| dataset | memory | attention | final avg accuracy % (mean ± std) | per seed | forgetting % | samples/s | "
           "saved activations per batch MB | wall s per run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = " / ".join(f"{a:.1f}" for a in r["per_seed"])
        out.append(f"| {r['dataset']} | {r['memory']} | {r['attention']} | {r['accuracy']:.1f} ± {r['accuracy_std']:.1f} | "
                   f"{seeds} | {r['forgetting']:.1f} | {r['samples_per_s']:.0f} | {r['saved_activation_mb']:.2f} | {r['wall_s']:.0f} |")
    return "\n".join(out) + "\n"


def activation_mb(d: Path, v: dict, seed: int) -> float:
    """Saved activations of one training forward of a batch of full grids through the run's task-0 model."""
    import torch

    import toe
    from tokenforge.models.vit import load_model

    model = load_model(d / "runs" / coretokens.run_id(v, seed) / "task-0")
    batch = int(coretokens.TRAIN[coretokens.TRAIN.index("--batch-size") + 1])
    ids = torch.zeros((batch, *model.config.grid), dtype=torch.long)
    return toe.saved_activations(model, ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["digits", "fashion"], default=["digits", "fashion"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--memories", nargs="+", choices=list(MEMORIES), default=["coreset-2", "coretokenset-2"],
                        help="memories to compare the attentions with (names: budget in %% of the train token bytes)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--data", type=Path, default=HERE / "work" / "coretokens", help="coretokens.py's work folder (data made there)")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "trar-sequence", help="this benchmark's runs (reused when done)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--fresh", action="store_true", help="leave out the runs of an earlier trar-sequence.json that this "
                        "invocation did not run (default: keep them)")
    args = parser.parse_args()
    os.environ["TQDM_DISABLE"] = "1"
    start = time.perf_counter()
    jobs = []
    for name in args.only:
        d = linked(coretokens.prepare(name, args.data, args.seeds), args.work / name, args.seeds)
        # seeds outermost, attentions side by side: the two runs at a time are mostly one global and one routed
        jobs += [(str(d), variant(m, a), seed, coretokens.DATASETS[name]["tasks"], name)
                 for seed in args.seeds for m in args.memories for a in ATTENTIONS]
    print(f"{len(jobs)} runs", flush=True)
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(coretokens.one_run, d, v, seed, tasks): (name, v) for d, v, seed, tasks, name in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            name, v = futures[fut]
            r = {**fut.result(), "dataset": name, "memory": v["memory"], "attention": v["attention"]}
            r["saved_activation_mb"] = activation_mb(args.work / name, v, r["seed"])
            results.append(r)
            print(f"[{i}/{len(jobs)}] {name} {v['memory']} {v['attention']} seed {r['seed']}: "
                  f"{100 * r['final_average_accuracy']:.1f}% ({r['wall_s']:.0f} s, {time.perf_counter() - start:.0f} s in all)", flush=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
            "train": coretokens.TRAIN, "token_fraction": coretokens.TOKEN_FRACTION, "seeds": args.seeds,
            "memories": {m: MEMORIES[m] for m in args.memories}, "wall_s": time.perf_counter() - start,
            "load_average_at_end": os.getloadavg()}
    saved = args.out / "trar-sequence.json"
    if saved.is_file() and not args.fresh:  # runs of earlier invocations stay in the table unless redone here
        key = lambda r: (r["dataset"], r["memory"], r["attention"], r["seed"])  # noqa: E731
        done = {key(r) for r in results}
        kept = [r for r in json.loads(saved.read_text())["runs"] if key(r) not in done]
        results += kept
        meta["kept_earlier_runs"] = len(kept)
    rows = summarize(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trar-sequence.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": results}, indent=2) + "\n")
    table = markdown(rows, meta)
    (args.out / "trar-sequence.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
