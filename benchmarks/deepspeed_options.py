"""DeepSpeed options benchmark: training speed and peak memory of one task for each precision, ZeRO stage,
activation-checkpointing and gradient-accumulation setting, on the CPU or a GPU.

    .venv/bin/python benchmarks/deepspeed_options.py                  # CPU preset: a small ViT (minutes on 2 cores)
    python benchmarks/deepspeed_options.py --preset gpu               # on a GPU machine: a ViT-S on 16x16 token grids

Each setting runs the real `tokenforge train` (one task, every class, no memory) as its own process on the
same synthetic token grids (a step's speed and memory do not depend on what the tokens mean). It reads
the job's stats.json: samples/s over the training loop, peak GPU memory as torch counts it (GPU) or peak
RSS (CPU), and the final train loss (only a check that no setting diverged: two epochs are too few to
learn these grids). Writes benchmarks/results/deepspeed_options-<preset>.json and .md (the table of docs/benchmarks/deepspeed-options.md).

    python benchmarks/deepspeed_options.py --render benchmarks/results/deepspeed_options-gpu.json   # the table again
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

PRESETS = {
    # samples, grid side, codebook size, code dim, classes, embed dim, depth, heads, batch, epochs
    "cpu": dict(samples=2048, side=8, codes=256, code_dim=32, classes=10, embed=128, depth=4, heads=4, batch=64, epochs=2),
    "gpu": dict(samples=32768, side=16, codes=1024, code_dim=32, classes=100, embed=384, depth=12, heads=6, batch=256, epochs=2),
}
SETTINGS = {  # name -> flags; gradient accumulation keeps the effective batch by a quarter of the micro-batch
    "fp32": [],
    "bf16": ["--precision", "bf16"],
    "fp32 + activation ckpt": ["--activation-checkpointing"],
    "bf16 + activation ckpt": ["--precision", "bf16", "--activation-checkpointing"],
    "bf16 + ZeRO-2": ["--precision", "bf16", "--zero-stage", "2"],
    "fp32, 4 x 1/4 batch (accumulation)": ["--gradient-accumulation", "4"],
}


def make_data(work: Path, p: dict) -> None:
    """A tokenizer folder (only its codebook is read), token grids with a class-revealing corner token, one task."""
    import numpy as np
    import torch

    from tokenforge.data.tokens import TokenSet, save_tokens
    from tokenforge.tokenizer.vq import build_model, make_config, save_tokenizer

    torch.manual_seed(0)
    (work / "tokenizer").mkdir(parents=True, exist_ok=True)
    save_tokenizer(build_model(make_config((p["side"] * 2,) * 2, 3, 2, p["codes"], p["code_dim"], 16, 0)), work / "tokenizer")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, p["classes"], p["samples"])
    ids = rng.integers(0, p["codes"], (p["samples"], p["side"], p["side"]))
    ids[:, 0, 0] = labels % p["codes"]
    save_tokens(work / "train.parquet", TokenSet([f"s{i:07d}" for i in range(len(labels))], labels, ids), p["codes"])
    (work / "split").mkdir(exist_ok=True)
    task = {"task": 0, "classes": list(range(p["classes"])), "class_names": [str(c) for c in range(p["classes"])]}
    (work / "split" / "tasks.json").write_text(json.dumps({"num_classes": p["classes"], "tasks": [task]}))


def run_setting(work: Path, p: dict, name: str, flags: list[str], threads: int) -> dict:
    out = work / "runs" / "".join(c if c.isalnum() else "-" for c in name)
    batch = p["batch"] // 4 if "--gradient-accumulation" in flags else p["batch"]
    cmd = [sys.executable, "-m", "tokenforge.cli", "train", "--tokens", str(work / "train.parquet"), "--tokenizer",
           str(work / "tokenizer"), "--split", str(work / "split"), "--task", "0", "--out", str(out),
           "--epochs", str(p["epochs"]), "--batch-size", str(batch), "--embed-dim", str(p["embed"]), "--depth", str(p["depth"]),
           "--num-heads", str(p["heads"]), "--memory-method", "none", "--threads", str(threads), "-q", *flags]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    stats = json.loads((out / "stats.json").read_text())
    peak = stats["peak_gpu_memory_mb"] if stats["peak_gpu_memory_mb"] is not None else stats["peak_rss_mb"]
    return {"setting": name, "flags": flags, "micro_batch": batch, "samples_per_s": stats["samples_per_s"],
            "peak_memory_mb": peak, "memory_kind": "GPU (torch)" if stats["peak_gpu_memory_mb"] is not None else "RSS",
            "final_loss": stats["final_loss"], "final_train_accuracy": stats["final_train_accuracy"],
            "device": stats["device"], "job_s": time.perf_counter() - t0}


def table(rows: list[dict], p: dict, device: str) -> str:
    base = rows[0]
    kind = "GPU memory allocated by torch" if base["memory_kind"].startswith("GPU") else "the process's RSS"
    lines = [f"ViT {p['embed']}x{p['depth']} ({p['heads']} heads) on {p['side']}x{p['side']} token grids, "
             f"{p['samples']} samples, batch {p['batch']}, {p['epochs']} epochs, one process on {device}; "
             f"peak memory is {kind}.", "",
             "| setting | micro-batch | samples/s | vs fp32 | peak memory, MB | vs fp32 | final train loss |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['micro_batch']} | {r['samples_per_s']:.0f} | {r['samples_per_s'] / base['samples_per_s']:.2f}x"
                     f" | {r['peak_memory_mb']:.0f} | {r['peak_memory_mb'] / base['peak_memory_mb']:.2f}x | {r['final_loss']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "deepspeed_options")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per job")
    parser.add_argument("--only", nargs="*", default=None, help="settings to run (default: all)")
    parser.add_argument("--render", type=Path, default=None, help="print the Markdown table of a results JSON and exit")
    args = parser.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        print(table(result["rows"], result["params"], result["device"]), end="")
        return
    p = PRESETS[args.preset]
    work = args.work / args.preset
    make_data(work, p)
    rows = []
    for name, flags in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        rows.append(run_setting(work, p, name, flags, args.threads))
        print(json.dumps(rows[-1]), flush=True)
    device = rows[0]["device"]
    if device.startswith("cuda"):
        import torch

        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU ({os.cpu_count()} cores, {args.threads} threads)"
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"preset": args.preset, "params": p, "device": device, "python": platform.python_version(), "rows": rows}
    (args.out / f"deepspeed_options-{args.preset}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"deepspeed_options-{args.preset}.md").write_text(table(rows, p, device))
    print(table(rows, p, device))


if __name__ == "__main__":
    main()
