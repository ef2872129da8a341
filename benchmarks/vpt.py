"""Visual prompt tuning (VPT) against full fine-tuning, with the memory levers of seeds/003 (fused attention,
activation checkpointing): trainable parameters, activation memory, peak RSS, samples/s and test accuracy.

    .venv/bin/python benchmarks/vpt.py                        # Fashion-MNIST tokens, 3 seeds (~25 min on 2 quiet cores)
    .venv/bin/python benchmarks/vpt.py --seeds 0 --epochs 1   # a quick look
    python benchmarks/vpt.py --preset gpu                     # on a GPU machine: toe.py's wider model, more epochs

The setting of benchmarks/toe.py (the 14x14 Fashion-MNIST tokens, 300 train and 300 test images per class, a
TokenViT of width 64 and 4 blocks, AdamW with warm-up + cosine, in one process; its `load_data` and presets are
imported), split in two: a supervised backbone is trained on classes 0-4 (once, seed 0, the preset's epochs;
saved under --work and reused), then each method learns classes 5-9 (a 5-way task, a fresh head) from it:
- full: full fine-tuning, every parameter (lr 1e-3, weight decay 0.05: toe.py's);
- vpt-shallow / vpt-deep: `tokenforge train --prompt-tokens 5 [--prompt-deep]`'s model (built by the package's
  `init_from` and the prompts option's `start`, as a task-0 job with --init does): the prompts and the head train, the backbone
  is frozen and in eval mode (lr 1e-2, weight decay 1e-4: prompts need a larger step; VPT's weight decay).
Accuracy: every method, 3 seeds (the seed draws the head, the prompts and the data order; the backbone is one),
fused attention on, no checkpointing (neither changes what is learnt: checkpointing is exact, unfused attention
differs in rounding), final test accuracy on classes 5-9.
Levers: every method x fused attention on/off x activation checkpointing on/off, each in a fresh process (peak
RSS is per process): 3 warm-up and 10 timed training steps of a batch. Reported: samples/s, the MB autograd keeps
for the backward of one training forward ("saved activations": the tensors it saves, parameters left out, plus
under checkpointing each block's input, which the checkpoint holds), the peak RSS of the training steps (Linux's VmHWM,
reset before the first step) and its rise over the RSS before it (on a CPU most of the peak is the process itself). On a GPU the peak is
torch.cuda.max_memory_allocated. Writes benchmarks/results/vpt-<preset>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import toe  # noqa: E402  (the shared setting: data, presets)

BACKBONE_CLASSES, TASK_CLASSES = range(0, 5), range(5, 10)
PROMPTS = 5  # VPT's default
METHODS = {
    "full": dict(prompts=0, deep=False, lr=1e-3, weight_decay=0.05),
    "vpt-shallow": dict(prompts=PROMPTS, deep=False, lr=1e-2, weight_decay=1e-4),
    "vpt-deep": dict(prompts=PROMPTS, deep=True, lr=1e-2, weight_decay=1e-4),
}
LEVER_STEPS, LEVER_WARMUP = 10, 3


def classes(tokens, keep) -> tuple:
    """(ids, labels renumbered 0..k-1) of the samples of `keep`'s classes."""
    import numpy as np
    import torch

    keep = list(keep)
    mask = np.isin(tokens.labels, keep)
    return torch.from_numpy(tokens.ids[mask]), torch.from_numpy(np.searchsorted(keep, tokens.labels[mask]))


def accuracy(model, xt, yt, device) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        right = sum(int((model(xt[i : i + 512].to(device)).argmax(1).cpu() == yt[i : i + 512]).sum()) for i in range(0, len(xt), 512))
    return right / len(xt)


def fit(model, x, y, preset: dict, seed: int, lr: float, weight_decay: float) -> dict:
    """toe.py's loop over the trainable parameters: AdamW, a one-epoch warm-up, then cosine; the seed orders the data."""
    import torch

    from tokenforge.engine.deepspeed import warmup_cosine
    from tokenforge.runtime import compute_device

    device, epochs, batch = compute_device(), preset["epochs"], preset["batch"]
    steps_per_epoch = math.ceil(len(x) / batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps_per_epoch, steps_per_epoch * epochs))
    generator = torch.Generator().manual_seed(seed)
    trained = 0.0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        toe.sync(device)
        start = time.perf_counter()
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            loss = torch.nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        toe.sync(device)
        trained += time.perf_counter() - start
    return {"train_s": trained, "samples_per_s": epochs * len(x) / trained}


def backbone(d: Path, train, test, preset: dict, work: Path, name: str) -> tuple[Path, dict]:
    """The supervised backbone on classes 0-4 (seed 0), trained once and saved as a `tokenforge pretrain` output."""
    from tokenforge.io import write_json
    from tokenforge.models.vit import ModelConfig, TokenViT, save_model
    from tokenforge.runtime import compute_device, seed_everything
    from tokenforge.tokenizer.vq import load_codebook

    out = work / f"backbone-{name}-e{preset['epochs']}"
    if (out / "stats.json").is_file():
        return out, json.loads((out / "stats.json").read_text())
    seed_everything(0)
    device = compute_device()
    codebook = load_codebook(d / "tokenizer")
    x, y = classes(train, BACKBONE_CLASSES)
    xt, yt = classes(test, BACKBONE_CLASSES)
    config = ModelConfig(grid=tuple(train.ids.shape[1:]), codebook_size=codebook.shape[0], code_dim=codebook.shape[1],
                         num_classes=len(BACKBONE_CLASSES), embed_dim=preset["embed"], depth=preset["depth"],
                         num_heads=preset["heads"], mlp_ratio=2.0)
    model = TokenViT(config, codebook).to(device)
    run = fit(model, x, y, preset, 0, preset["lr"], 0.05)
    stats = {"classes": list(BACKBONE_CLASSES), "samples": len(x), "test_accuracy": accuracy(model, xt, yt, device), **run}
    print(f"backbone on classes 0-4: test accuracy {stats['test_accuracy']:.4f} ({run['train_s']:.0f} s)", flush=True)
    save_model(model.cpu().eval(), out)
    write_json(out / "stats.json", stats)
    return out, stats


def task_model(d: Path, base: Path, method: str):
    """The model a task-0 job would train from --init `base`: a fresh 5-class head, prompts as the method says."""
    from tokenforge.engine.pretrain import init_from
    from tokenforge.models.options.prompts import PROMPTS
    from tokenforge.tokenizer.vq import load_codebook

    spec = METHODS[method]
    model = init_from(base, len(TASK_CLASSES), False, load_codebook(d / "tokenizer"), "tokens")
    flags = Namespace(prompt_tokens=spec["prompts"], prompt_deep=spec["deep"], prompt_dropout=0.0, init=base)
    return PROMPTS.start(model, flags)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(d: Path, base: Path, train, test, preset: dict, method: str, seed: int) -> dict:
    """One method, one seed: fine-tune or prompt-tune on classes 5-9, the test accuracy after the last epoch."""
    from tokenforge.runtime import compute_device, seed_everything

    seed_everything(seed)
    device = compute_device()
    model = task_model(d, base, method).to(device)
    x, y = classes(train, TASK_CLASSES)
    xt, yt = classes(test, TASK_CLASSES)
    spec = METHODS[method]
    result = fit(model, x, y, preset, seed, spec["lr"], spec["weight_decay"])
    acc = accuracy(model, xt, yt, device)
    print(f"  seed {seed} {method:11s}: test accuracy {acc:.4f} ({result['train_s']:.0f} s, {result['samples_per_s']:.0f} samples/s)", flush=True)
    return {"method": method, "seed": seed, "trainable_parameters": trainable(model), "final_accuracy": acc, **result}


def saved_activations(model, batch) -> float:
    """MB autograd keeps for the backward of one training forward of `batch`: saved tensors that are not parameters,
    plus, under activation checkpointing, each checkpointed block's input (held by the checkpoint, not saved)."""
    import torch

    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    def held(module, args):
        nonlocal total
        total += args[0].numel() * args[0].element_size()

    hooks = [b.register_forward_pre_hook(held) for b in model.vit.blocks] if model.vit.grad_checkpointing else []
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch).sum()
    for hook in hooks:
        hook.remove()
    return total / 2**20


def rss_mb() -> float:
    """The process's resident set now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Start the process's peak RSS (VmHWM) afresh from now (Linux >= 4.0: clear_refs 5); else it counts from the start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """The process's peak RSS since `reset_peak_rss` (VmHWM), MB; ru_maxrss (since the start) where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def lever(d: Path, base: Path, train, preset: dict, method: str, fused: bool, checkpointing: bool) -> dict:
    """In this (fresh) process: samples/s over LEVER_STEPS training steps after LEVER_WARMUP, saved activations, peak
    memory (RSS, or GPU memory on a GPU)."""
    import torch

    from tokenforge.runtime import compute_device, seed_everything

    seed_everything(0)
    device = compute_device()
    model = task_model(d, base, method).to(device)
    model.set_fused_attention(fused)
    model.vit.set_grad_checkpointing(checkpointing)
    x, y = classes(train, TASK_CLASSES)
    batch = preset["batch"]
    spec = METHODS[method]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["lr"], weight_decay=spec["weight_decay"])
    model.train()
    before = rss_mb()
    reset_peak_rss()  # the training steps' peak, not that of loading the data
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    generator = torch.Generator().manual_seed(0)
    start = None
    for step in range(LEVER_WARMUP + LEVER_STEPS):
        if step == LEVER_WARMUP:
            toe.sync(device)
            start = time.perf_counter()
        idx = torch.randint(len(x), (batch,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    toe.sync(device)
    elapsed = time.perf_counter() - start
    peak = peak_rss_mb()
    activations = saved_activations(model, x[:batch].to(device))
    return {"method": method, "fused_attention": fused, "activation_checkpointing": checkpointing,
            "trainable_parameters": trainable(model), "samples_per_s": LEVER_STEPS * batch / elapsed,
            "saved_activation_mb": activations, "peak_rss_mb": peak, "rss_rise_mb": peak - before,
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def levers(args, base: Path) -> list[dict]:
    """Every method x fused x checkpointing, each in its own process (peak RSS is a process's)."""
    out = []
    for method in METHODS:
        for fused in (True, False):
            for checkpointing in (False, True):
                spec = json.dumps({"method": method, "fused": fused, "checkpointing": checkpointing, "base": str(base)})
                proc = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--work", str(args.work),
                                       *(["--epochs", str(args.epochs)] if args.epochs else []), "--lever", spec],
                                      capture_output=True, text=True, check=True)
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"  {method:11s} fused {fused!s:5s} checkpointing {checkpointing!s:5s}: {row['samples_per_s']:.0f} samples/s, "
                      f"{row['saved_activation_mb']:.1f} MB saved, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
                out.append(row)
    return out


def markdown(runs: list[dict], rows: list[dict], meta: dict) -> str:
    p = meta["preset"]
    out = [f"VPT on Fashion-MNIST tokens (14x14): a TokenViT of width {p['embed']} and depth {p['depth']} trained on classes "
           f"0-4 (test accuracy {100 * meta['backbone']['test_accuracy']:.1f}%), then classes 5-9 learnt from it, {p['epochs']} "
           f"epochs, batch {p['batch']}, {PROMPTS} prompt tokens, {meta['device']}.", "",
           "| method | trainable parameters | test accuracy % on classes 5-9 (mean ± std) | samples/s |", "|---|---|---|---|"]
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        acc = [100 * r["final_accuracy"] for r in rs]
        out.append(f"| {method} | {rs[0]['trainable_parameters']:,} | {statistics.mean(acc):.1f} ± {statistics.pstdev(acc):.1f} "
                   f"(n={len(acc)}) | {statistics.mean(r['samples_per_s'] for r in rs):.0f} |")
    gpu = any(r["peak_gpu_mb"] is not None for r in rows)
    out += ["", f"Memory levers ({LEVER_STEPS} timed steps after {LEVER_WARMUP} warm-up, each setting in a fresh process):", "",
            "| method | fused attention | activation checkpointing | saved activations per batch (MB) | "
            + ("peak GPU memory (MB)" if gpu else "peak RSS (MB) | RSS rise in training (MB)") + " | samples/s |",
            "|---|---|---|---|" + ("---|" if gpu else "---|---|") + "---|"]
    for r in rows:
        memory = f"{r['peak_gpu_mb']:.0f}" if gpu else f"{r['peak_rss_mb']:.0f} | {r['rss_rise_mb']:.0f}"
        out.append(f"| {r['method']} | {'on' if r['fused_attention'] else 'off'} | {'on' if r['activation_checkpointing'] else 'off'} | "
                   f"{r['saved_activation_mb']:.1f} | {memory} | {r['samples_per_s']:.0f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(toe.PRESETS), default="cpu")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (backbone and task)")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "coretokens", help="where the fashion tokens are made")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--lever", default=None, help=argparse.SUPPRESS)  # internal: one lever measurement, JSON on stdout
    args = parser.parse_args()
    import torch

    preset = {**toe.PRESETS[args.preset], **({"epochs": args.epochs} if args.epochs else {})}
    torch.set_num_threads(preset["threads"])
    os.environ["TQDM_DISABLE"] = "1"
    d, train, test = toe.load_data(args.work)
    if args.lever:
        spec = json.loads(args.lever)
        print(json.dumps(lever(d, Path(spec["base"]), train, preset, spec["method"], spec["fused"], spec["checkpointing"])))
        return
    base, base_stats = backbone(d, train, test, preset, args.work / "vpt", args.preset)
    runs = [run(d, base, train, test, preset, method, seed) for seed in args.seeds for method in METHODS]
    rows = levers(args, base)
    from tokenforge.runtime import compute_device

    device = compute_device()
    meta = {"preset": preset, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"CPU, {torch.get_num_threads()} threads", "torch": torch.__version__, "seeds": args.seeds,
            "backbone": base_stats, "methods": METHODS, "prompt_tokens": PROMPTS}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"vpt-{args.preset}.json").write_text(json.dumps({"meta": meta, "runs": runs, "levers": rows}, indent=2) + "\n")
    table = markdown(runs, rows, meta)
    (args.out / f"vpt-{args.preset}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
