"""Token expansion (ToE) benchmark: training time to the plain model's accuracy, on 14x14 token grids.

    .venv/bin/python benchmarks/toe.py                       # Fashion-MNIST tokens, 3 seeds (about 20 min on 2 quiet cores)
    .venv/bin/python benchmarks/toe.py --seeds 0 --epochs 4  # a quick look
    python benchmarks/toe.py --preset gpu                    # on a GPU machine: wider model, more epochs

What it measures (issue 13's goal: at least 1.3x faster, the paper's figure): one 10-class task (no continual
part: ToE changes how a task is trained) on the Fashion-MNIST token grids of
config/experiments/coretokens_fashion.yaml (300 train and 300 test images per class, 14x14 = 196 tokens; made by
`prepare` in --work when missing), with a TokenViT of at least 4 blocks. Each seed trains the plain model and the same model with
`train.token_expansion` on (ToE's DeiT schedule scaled to the epochs: stages at 0, 1/3 and 2/3 of them keeping
0.5, 0.75 and 1.0 of the tokens, r0 0.25, 2 chunks, after block 0), with the same initialisation, data order,
AdamW and warm-up + cosine schedule as `tokenforge train`, in one process, the test set evaluated after
every epoch (evaluation time is not counted). Reported per seed: the plain model's final test accuracy (the
target is that minus 1 point), each run's training seconds until its test accuracy first reaches the
target (time to accuracy), the total training seconds, the final accuracies; the speed-up is plain time
to target / ToE time to target. It calls the model and the ToE code of the package (TokenViT.set_expansion,
set_epoch), not `tokenforge train`: the DeepSpeed engine and the memory are the same for both and would
only add a constant. Writes benchmarks/results/toe-<preset>.json and .md (docs/benchmarks/model-options.md renders it from the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRESETS = {
    "cpu": dict(embed=64, depth=4, heads=4, batch=64, epochs=9, lr=1e-3, threads=2),
    "gpu": dict(embed=384, depth=12, heads=6, batch=256, epochs=30, lr=1e-3, threads=8),
}


# The Fashion-MNIST tokens of config/experiments/coretokens_fashion.yaml (its shard and tokenizer settings, seed 0).
FASHION_SHARD = ["--source", "idx:/usr/share/datasets/fashion-mnist", "--max-per-class", "300"]
FASHION_TOKENIZER = ["--codebook-size", "128", "--code-dim", "16", "--downsample", "2", "--epochs", "10"]


def prepare(work: Path) -> Path:
    """Shards, tokenizer and tokens of the Fashion-MNIST subset in work/fashion (`tokenforge shard/tokenizer/tokenize`),
    made once and reused."""
    d = work / "fashion"
    if not (d / "tokens" / "train.parquet").is_file():
        tokenforge = [sys.executable, "-m", "tokenforge"]
        subprocess.run([*tokenforge, "shard", *FASHION_SHARD, "--out", str(d / "shard"), "-q"], check=True)
        subprocess.run([*tokenforge, "tokenizer", "--shards", str(d / "shard"), "--out", str(d / "tokenizer"),
                        *FASHION_TOKENIZER, "--threads", "2", "-q"], check=True)  # fmt: skip
        subprocess.run([*tokenforge, "tokenize", "--shards", str(d / "shard"), "--tokenizer", str(d / "tokenizer"),
                        "--out", str(d / "tokens"), "-q"], check=True)  # fmt: skip
    return d


def load_data(work: Path):
    d = prepare(work)
    from tokenforge.data.tokens import load_tokens

    return d, load_tokens(d / "tokens" / "train.parquet"), load_tokens(d / "tokens" / "test.parquet")


def run(d: Path, train, test, preset: dict, seed: int, toe: bool, attention: str = "global") -> dict:
    import torch

    from tokenforge.engine.deepspeed import warmup_cosine
    from tokenforge.models.expansion import ExpansionConfig
    from tokenforge.models.vit import ModelConfig, TokenViT
    from tokenforge.runtime import compute_device, seed_everything
    from tokenforge.tokenizer.vq import load_codebook

    seed_everything(seed)
    device = compute_device()
    codebook = load_codebook(d / "tokenizer")
    config = ModelConfig(grid=tuple(train.ids.shape[1:]), codebook_size=codebook.shape[0], code_dim=codebook.shape[1],
                         num_classes=int(train.labels.max()) + 1, embed_dim=preset["embed"], depth=preset["depth"],
                         num_heads=preset["heads"], mlp_ratio=2.0, attention=attention)
    model = TokenViT(config, codebook).to(device)
    epochs = preset["epochs"]
    if toe:
        third = max(1, round(epochs / 3))
        model.set_expansion(ExpansionConfig(steps=(0, third, 2 * third), keep=(0.5, 0.75, 1.0), r0=0.25, chunks=2, after=0))
    x, y = torch.from_numpy(train.ids), torch.from_numpy(train.labels)
    xt, yt = torch.from_numpy(test.ids).to(device), torch.from_numpy(test.labels).to(device)
    steps_per_epoch = math.ceil(len(x) / preset["batch"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset["lr"], weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps_per_epoch, steps_per_epoch * epochs))
    generator = torch.Generator().manual_seed(seed)
    curve, trained = [], 0.0
    for epoch in range(epochs):
        model.train()
        model.set_epoch(epoch)
        order = torch.randperm(len(x), generator=generator)
        sync(device)
        start = time.perf_counter()
        for b in range(steps_per_epoch):
            idx = order[b * preset["batch"] : (b + 1) * preset["batch"]]
            loss = torch.nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        sync(device)
        trained += time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            right = sum(int((model(xt[i : i + 512]).argmax(1) == yt[i : i + 512]).sum()) for i in range(0, len(xt), 512))
        curve.append({"epoch": epoch + 1, "train_s": trained, "test_accuracy": right / len(xt)})
        print(f"  seed {seed} {'toe  ' if toe else attention} epoch {epoch + 1}: {right / len(xt):.4f} ({trained:.1f} s)", flush=True)
    return {"seed": seed, "toe": toe, "attention": attention, "curve": curve, "train_s": trained,
            "final_accuracy": curve[-1]["test_accuracy"], "samples_per_s": epochs * len(x) / trained,
            "saved_activation_mb": saved_activations(model, x[: preset["batch"]].to(device))}


def saved_activations(model, batch) -> float:
    """MB of tensors autograd keeps for the backward of one training forward of `batch` (the activation memory)."""
    import torch

    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch).sum()
    return total / 2**20


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_to(curve: list[dict], target: float) -> float | None:
    return next((p["train_s"] for p in curve if p["test_accuracy"] >= target), None)


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for seed in sorted({r["seed"] for r in runs}):
        plain = next(r for r in runs if r["seed"] == seed and not r["toe"])
        toe = next(r for r in runs if r["seed"] == seed and r["toe"])
        target = plain["final_accuracy"] - 0.01
        t_plain, t_toe = time_to(plain["curve"], target), time_to(toe["curve"], target)
        rows.append({"seed": seed, "target": target, "plain_final": plain["final_accuracy"], "toe_final": toe["final_accuracy"],
                     "plain_time_to_target_s": t_plain, "toe_time_to_target_s": t_toe,
                     "plain_train_s": plain["train_s"], "toe_train_s": toe["train_s"],
                     "speedup_to_target": t_plain / t_toe if t_toe else None, "speedup_total": plain["train_s"] / toe["train_s"]})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    p = meta["preset"]
    out = [f"ToE on Fashion-MNIST tokens (14x14), TokenViT width {p['embed']}, depth {p['depth']}, {p['epochs']} epochs, "
           f"batch {p['batch']}, {meta['device']}; target = the plain model's final test accuracy − 1 point.", "",
           "| seed | plain final % | ToE final % | plain s to target | ToE s to target | speed-up to target | total train s plain / ToE |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        toe_t = f"{r['toe_time_to_target_s']:.0f}" if r["toe_time_to_target_s"] is not None else "not reached"
        speed = f"{r['speedup_to_target']:.2f}×" if r["speedup_to_target"] else "–"
        out.append(f"| {r['seed']} | {100 * r['plain_final']:.1f} | {100 * r['toe_final']:.1f} | {r['plain_time_to_target_s']:.0f} | "
                   f"{toe_t} | {speed} | {r['plain_train_s']:.0f} / {r['toe_train_s']:.0f} ({r['speedup_total']:.2f}×) |")
    reached = [r["speedup_to_target"] for r in rows if r["speedup_to_target"]]
    total = statistics.mean(r["speedup_total"] for r in rows)
    out += ["", f"Mean speed-up to target: {statistics.mean(reached):.2f}× over {len(reached)} of {len(rows)} seeds "
            f"(ToE reached the target in {len(reached)}); whole-run training time {total:.2f}× shorter with ToE."
            if reached else f"ToE never reached the target; whole-run training time {total:.2f}× shorter with ToE."]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "coretokens", help="where the fashion tokens are made")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    import torch

    preset = {**PRESETS[args.preset], **({"epochs": args.epochs} if args.epochs else {})}
    torch.set_num_threads(preset["threads"])
    os.environ["TQDM_DISABLE"] = "1"
    d, train, test = load_data(args.work)
    runs = []
    for seed in args.seeds:
        for toe in (False, True):
            runs.append(run(d, train, test, preset, seed, toe))
    from tokenforge.runtime import compute_device

    device = compute_device()
    meta = {"preset": preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"CPU, {torch.get_num_threads()} threads ({platform.machine()}, {os.cpu_count()} CPUs)",
            "torch": torch.__version__, "train_samples": len(train.keys), "test_samples": len(test.keys)}
    rows = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"toe-{args.preset}.json").write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=2) + "\n")
    table = markdown(rows, meta)
    (args.out / f"toe-{args.preset}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
