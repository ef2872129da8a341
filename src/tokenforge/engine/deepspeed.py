"""The DeepSpeed engine of a training job: its config (the JSON file with the job's flags on top), AdamW and a
warm-up + cosine schedule. On a CPU it runs as one process with gloo; under torchrun or the deepspeed
launcher one process per GPU.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from tokenforge.engine import ZERO_STAGES
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json


def ensure_distributed_env() -> None:
    """One plain process still needs the rendezvous variables, or DeepSpeed falls back to mpi4py."""
    from tokenforge.engine.launch import free_port

    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def _overrides(config: dict, args) -> dict:
    """The DeepSpeed flags given on the command line, on top of `config`."""
    config["train_micro_batch_size_per_gpu"] = args.batch_size
    if args.gradient_accumulation is not None:
        config["gradient_accumulation_steps"] = args.gradient_accumulation
    config.setdefault("gradient_accumulation_steps", 1)
    if args.zero_stage is not None:
        config["zero_optimization"] = {**config.get("zero_optimization", {}), "stage": args.zero_stage}
    if args.precision is not None:
        config["bf16"] = {**config.get("bf16", {}), "enabled": args.precision == "bf16"}
        if args.precision == "bf16":
            config["fp16"] = {**config.get("fp16", {}), "enabled": False}
    config.setdefault("steps_per_print", 10**9)
    return config


def deepspeed_config(path: Path | None, args) -> dict:
    """The JSON file's settings, with the batch size and every DeepSpeed flag given on the command line on top."""
    config = read_json(path) if path else {}
    if not isinstance(config, dict):
        raise TokenforgeError(f"{path}: a DeepSpeed config must be a JSON object")
    config = _overrides({k: v for k, v in config.items() if k not in ("train_batch_size", "optimizer", "scheduler")}, args)
    gas, stage = config["gradient_accumulation_steps"], config.get("zero_optimization", {}).get("stage", 0)
    if not isinstance(gas, int) or gas < 1:
        raise TokenforgeError(f"{path or '--gradient-accumulation'}: gradient_accumulation_steps must be an integer >= 1, got {gas!r}")
    if stage not in ZERO_STAGES:
        raise TokenforgeError(f"{path}: zero_optimization.stage {stage!r} is not supported; use one of {ZERO_STAGES}")
    return config


def warmup_cosine(warmup: int, steps: int):
    """The learning-rate factor of optimizer step `step`: linear warm-up over `warmup` steps, then cosine to 0."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return schedule


def build_engine(model, args, micro_steps: int):
    """The DeepSpeed engine: AdamW over the trainable parameters and a warm-up + cosine schedule over the run's
    optimizer steps, run with the job's speed options (engine/speed.py: compile, adamw, lean_engine, cpu_heap_cache)."""
    import deepspeed
    import torch

    from tokenforge.engine import speed
    from tokenforge.runtime import compute_device

    ensure_distributed_env()
    device = compute_device()
    if device.type == "cpu" and args.cpu_heap_cache:
        speed.cpu_heap_cache(True)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    config = deepspeed_config(args.deepspeed_config, args)
    # DeepSpeed steps the optimizer and the scheduler once per gradient_accumulation_steps micro-batches.
    steps = max(1, math.ceil(micro_steps / config["gradient_accumulation_steps"]))
    # A torch optimizer: DeepSpeed's own Adam would JIT-compile a fused kernel first. Only the trainable parameters:
    # a prompted model (VPT) freezes its backbone, which then has no optimizer state and never changes.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay, **speed.adamw_options(args.adamw, device))
    warmup = max(1, int(args.warmup_epochs * steps / max(args.epochs, 1)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config, dist_init_required=True)
    if engine.device.type == "cuda":
        # Deterministic mode fills every new tensor with NaN to expose reads of uninitialised memory: on a GPU that
        # was about half of a bf16 ViT-S step's ~5,300 kernel launches (measured with torch.profiler on an H100),
        # and the step is bound by launches. Nothing here reads uninitialised memory. CPU runs keep the default: with
        # cpu_heap_cache the fills cost nothing measurable there (their cost was the first touch of fresh pages).
        torch.utils.deterministic.fill_uninitialized_memory = False
    if args.lean_engine:
        speed.lean_engine(engine)
    speed.compile_model(model, args.compile)
    return engine


def prebuild_ops() -> None:
    """Compile the ops DeepSpeed JIT-builds for this machine's accelerator at a job's first start (on a CPU: its
    shared-memory all-reduce, ~30-100 s once, then cached in torch's extensions folder), so `make install` pays
    that instead of the first training job. An op the accelerator lacks or cannot build is left to DeepSpeed."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        builder.load(verbose=False)


if __name__ == "__main__":  # `python -m tokenforge.engine.deepspeed`: what the Makefile's install runs
    prebuild_ops()
