"""Routed attention spans (TRAR) against global attention: accuracy, samples/s and activation memory.

    .venv/bin/python benchmarks/trar.py                       # Fashion-MNIST tokens, 3 seeds (~15 min on 2 cores)
    .venv/bin/python benchmarks/trar.py --seeds 0 --epochs 2  # a quick look

The setting of benchmarks/toe.py (one 10-class task on the 14x14 Fashion-MNIST tokens, TokenViT width 64,
4 blocks, the same initialisation, data order and schedule for both, test accuracy after every epoch), with
`attention: routed` (orders 0-3, soft routing: the defaults) against the plain global attention. A single
task, not the continual sequence: the option changes the model, and this isolates its cost and accuracy.
Reported per seed: final test accuracy, training samples/s, and the MB of tensors autograd saves for one
training forward of a batch (activation memory; on the CPU peak RSS would mostly measure the process).
Writes benchmarks/results/trar-<preset>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import toe  # noqa: E402  (the shared setting: data, model size, training loop)


def markdown(runs: list[dict], meta: dict) -> str:
    p = meta["preset"]
    out = [f"TRAR on Fashion-MNIST tokens (14x14), TokenViT width {p['embed']}, depth {p['depth']}, {p['epochs']} epochs, "
           f"batch {p['batch']}, {meta['device']}.", "",
           "| attention | final test accuracy % (mean ± std) | samples/s | saved activations per batch (MB) |", "|---|---|---|---|"]
    for kind in ("global", "routed"):
        rs = [r for r in runs if r["attention"] == kind]
        acc = [100 * r["final_accuracy"] for r in rs]
        out.append(f"| {kind} | {statistics.mean(acc):.1f} ± {statistics.pstdev(acc):.1f} | "
                   f"{statistics.mean(r['samples_per_s'] for r in rs):.0f} | {statistics.mean(r['saved_activation_mb'] for r in rs):.1f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(toe.PRESETS), default="cpu")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "coretokens", help="where the fashion tokens are made")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    import torch

    preset = {**toe.PRESETS[args.preset], **({"epochs": args.epochs} if args.epochs else {})}
    torch.set_num_threads(preset["threads"])
    os.environ["TQDM_DISABLE"] = "1"
    d, train, test = toe.load_data(args.work)
    runs = [toe.run(d, train, test, preset, seed, False, attention) for seed in args.seeds for attention in ("global", "routed")]
    from tokenforge.runtime import compute_device

    device = compute_device()
    meta = {"preset": preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"CPU, {torch.get_num_threads()} threads", "torch": torch.__version__, "seeds": args.seeds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"trar-{args.preset}.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    table = markdown(runs, meta)
    (args.out / f"trar-{args.preset}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
