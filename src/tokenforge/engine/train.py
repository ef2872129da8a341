r"""Train the token ViT on one task through a DeepSpeed engine, replaying the earlier tasks' memory.

  tokenforge train --tokens tokens/train.parquet --tokenizer tokenizer/ --split split/ --task 1 \
      --previous train/task-0 --deepspeed-config config/deepspeed.json --out train/task-1

Task 0 starts from a seeded initialisation; task t > 0 starts from task t-1's model and replays its
memory: every step adds CE(memory batch) to CE(current batch), with memory samples fed as short
sequences of their kept tokens. Logits are restricted to the classes seen so far. After training,
the memory of all tasks so far is rebuilt within the byte budget (older tasks give up their
last-ranked samples, class-balanced; see tokenforge.memory). On a CPU it runs as one process with gloo; under
`torchrun`/`deepspeed` the same code runs one process per GPU.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from tokenforge.engine import ZERO_STAGES
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json

log = logging.getLogger(__name__)





def _add_augment_arguments(group) -> None:
    """One --augment-<field> flag per AugmentConfig field, so config keys and flags never drift apart."""
    from dataclasses import fields

    from tokenforge.data.augment import FIELD_HELP, AugmentConfig

    for f in fields(AugmentConfig):
        flag = f"--augment-{f.name.replace('_', '-')}"
        if isinstance(f.default, tuple):
            group.add_argument(flag, type=float, nargs=len(f.default), default=f.default, metavar=("LOW", "HIGH"), help=FIELD_HELP.get(f.name, " "))
        else:
            group.add_argument(flag, type=type(f.default), default=f.default, help=FIELD_HELP.get(f.name, " "))


def _augmenter(args, codebook):
    """The TokenAugmenter for this job, or None when every augmentation is off."""
    from dataclasses import fields

    from tokenforge.data.augment import AugmentConfig, TokenAugmenter, load_synonyms

    config = AugmentConfig.from_dict({f.name: getattr(args, f"augment_{f.name}") for f in fields(AugmentConfig)})
    if not config.active:
        return None
    if args.input != "tokens":
        raise TokenforgeError("augment: token augmentations need --input tokens")
    synonyms = None
    if config.synonym_p > 0:
        if args.synonyms is None:
            raise TokenforgeError("--synonyms: required when augment.synonym_p > 0")
        synonyms = load_synonyms(args.synonyms, config.synonym_k)
    return TokenAugmenter(config, codebook, synonyms, seed=args.seed * 1000 + args.task)


def _max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _ensure_distributed_env() -> None:
    """One plain process still needs the rendezvous variables, or DeepSpeed falls back to mpi4py."""
    from tokenforge.engine.launch import free_port

    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def _deepspeed_config(path: Path | None, args) -> dict:
    """The JSON file's settings, with the batch size and every DeepSpeed flag given on the command line on top."""
    config = read_json(path) if path else {}
    if not isinstance(config, dict):
        raise TokenforgeError(f"{path}: a DeepSpeed config must be a JSON object")
    config = {k: v for k, v in config.items() if k not in ("train_batch_size", "optimizer", "scheduler")}
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
    gas, stage = config["gradient_accumulation_steps"], config.get("zero_optimization", {}).get("stage", 0)
    if not isinstance(gas, int) or gas < 1:
        raise TokenforgeError(f"{path or '--gradient-accumulation'}: gradient_accumulation_steps must be an integer >= 1, got {gas!r}")
    if stage not in ZERO_STAGES:
        raise TokenforgeError(f"{path}: zero_optimization.stage {stage!r} is not supported; use one of {ZERO_STAGES}")
    return config


def _engine(model, args, micro_steps: int):
    """The DeepSpeed engine: AdamW and a warm-up + cosine schedule over the run's optimizer steps."""
    import deepspeed
    import torch

    _ensure_distributed_env()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    config = _deepspeed_config(args.deepspeed_config, args)
    # DeepSpeed steps the optimizer and the scheduler once per gradient_accumulation_steps micro-batches.
    steps = max(1, math.ceil(micro_steps / config["gradient_accumulation_steps"]))
    # A torch optimizer: DeepSpeed's own Adam would JIT-compile a fused kernel first.
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = max(1, int(args.warmup_epochs * steps / max(args.epochs, 1)))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=config,
        dist_init_required=True,
    )
    return engine


def _plain_model(module, device):
    """The trained weights in a fresh fp32 model on `device`, in eval mode: memory building and saving see the same
    model whatever the training precision, and without activation checkpointing or DeepSpeed's hooks."""
    from tokenforge.models.vit import TokenViT

    state = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in module.state_dict().items()}
    plain = TokenViT(module.config, state.get("codebook"))
    plain.load_state_dict(state)
    return plain.to(device).eval()


def _task_info(split_dir: Path, task: int) -> tuple[list[int], list[int], int, list[int]]:
    """(this task's classes, classes seen so far, label space size, the classes of every task)."""
    manifest = read_json(split_dir / "tasks.json")
    tasks = manifest["tasks"]
    if not 0 <= task < len(tasks):
        raise TokenforgeError(f"--task {task}: the split has tasks 0..{len(tasks) - 1}")
    seen = [c for t in tasks[: task + 1] for c in t["classes"]]
    return tasks[task]["classes"], seen, manifest["num_classes"], [c for t in tasks for c in t["classes"]]


def load_units(kind: str, tokens: Path | None, shards: Path | None, split: str, patch: int):
    """(keys, labels, units) of a split: code ids (N, h, w), or uint8 pixel patches (N, h, w, F)."""
    import torch

    from tokenforge.data.shards import load_split
    from tokenforge.data.tokens import load_tokens
    from tokenforge.models.vit import patchify

    if kind == "tokens":
        if tokens is None:
            raise TokenforgeError("--tokens: required with --input tokens")
        data = load_tokens(tokens)
        return data.keys, data.labels, data.ids
    if shards is None:
        raise TokenforgeError("--shards: required with --input pixels")
    images = load_split(shards, split)
    return images.keys, images.labels, patchify(torch.from_numpy(images.images), patch).numpy()


def _initial_model(args, num_classes: int):
    from tokenforge.models.vit import ModelConfig, TokenViT, load_model
    from tokenforge.tokenizer.vq import load_codebook

    if args.task > 0:
        if args.previous is None:
            raise TokenforgeError(f"--previous: required for task {args.task} (task {args.task - 1}'s output)")
        model = load_model(args.previous)
        if model.config.input != args.input:
            raise TokenforgeError(f"--previous {args.previous}: a model of input {model.config.input!r}, not {args.input!r}")
        return model
    tok = read_json(args.tokenizer / "config.json")
    if args.input == "tokens":
        codebook = load_codebook(args.tokenizer)
        sizes = {"codebook_size": codebook.shape[0], "code_dim": codebook.shape[1]}
    else:  # the same grid as the tokens: one patch of downsample x downsample pixels per token
        codebook = None
        sizes = {"codebook_size": 0, "code_dim": tok["downsample"] ** 2 * tok["channels"], "patch": tok["downsample"]}
    config = ModelConfig(
        grid=tuple(tok["grid"]),
        input=args.input,
        **sizes,
        num_classes=num_classes,
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.num_heads,
        mlp_ratio=args.mlp_ratio,
    )
    return TokenViT(config, codebook)


def subset(units, positions):
    """The units (B, h, w[, F]) at `positions` (B, k) -> (B, k[, F])."""
    flat = units.flatten(1, 2)
    if flat.dim() == 2:
        return flat.gather(1, positions)
    return flat.gather(1, positions[:, :, None].expand(-1, -1, flat.shape[2]))


def memory_policy(args, model, tokens_bytes: int | None, num_classes: int):
    from tokenforge.continual.memory import Policy, resolve_budget

    return Policy(
        method=args.memory_method,
        selection=args.memory_selection,
        scorer=args.memory_scorer,
        token_fraction=args.memory_token_fraction,
        budget=resolve_budget(args.memory_budget, tokens_bytes),
        samples_per_class=args.memory_samples_per_class,
        num_codes=model.config.codebook_size or 256,
        num_positions=model.num_tokens,
        num_classes=num_classes,
    )


