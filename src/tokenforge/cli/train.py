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

import argparse
import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tokenforge.engine.train import PRECISIONS, ZERO_STAGES, _add_augment_arguments

    data = parser.add_argument_group("data")
    data.add_argument(
        "--input",
        choices=["tokens", "pixels"],
        default="tokens",
        help="train on VQ tokens, or on pixel patches of the same grid (the baseline; needs --shards)",
    )
    data.add_argument("--tokens", type=Path, default=None, help="train token Parquet from `tokenforge tokenize` (input tokens)")
    data.add_argument("--shards", type=Path, default=None, help="WebDataset shard directory (input pixels)")
    data.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory (codebook and token grid)")
    data.add_argument("--split", type=Path, required=True, help="directory of task manifests from `tokenforge split`")
    data.add_argument("--task", type=int, required=True, help="index of the task to train (0-based)")
    data.add_argument("--previous", type=Path, default=None, help="task t-1's output directory (model + memory); required for t > 0")
    data.add_argument("--out", type=Path, required=True, help="output directory: model, memory.arrows.zst, stats.json")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=30, help="epochs over the current task's data")
    opt.add_argument("--batch-size", type=int, default=64, help="micro-batch size per process (current task)")
    opt.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW (cosine decay, linear warm-up)")
    opt.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    opt.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up length in epochs")
    opt.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and memory sampling")
    opt.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="save a resumable checkpoint here every --checkpoint-every steps and resume from it when restarted "
        "(keep it outside --out; removed once the outputs are written; default: no checkpoints)",
    )
    opt.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints (with --checkpoint-dir)")
    opt.add_argument("--log-every", type=int, default=10, help="log step metrics (loss, lr, samples/s, peak memory) every N steps")
    ds = parser.add_argument_group(
        "DeepSpeed (a flag given overrides the same setting in --deepspeed-config; one not given keeps the file's, "
        "else ZeRO 0, fp32, no accumulation, no activation checkpointing)"
    )
    ds.add_argument("--deepspeed-config", type=Path, default=None, help="DeepSpeed JSON config for everything else (clipping, ...)")
    ds.add_argument(
        "--zero-stage",
        type=int,
        choices=ZERO_STAGES,
        default=None,
        help="ZeRO stage: 0 off, 1 partitions optimizer states, 2 also gradients, across data-parallel processes "
        "(3 is not offered: memory building and the partial-sequence path need whole parameters)",
    )
    ds.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="fp32, or bf16 mixed precision (bf16 weights and activations, fp32 optimizer state; CPUs and GPUs)",
    )
    ds.add_argument(
        "--gradient-accumulation",
        type=int,
        default=None,
        help="micro-batches per optimizer step: the effective batch is batch size x this x processes",
    )
    ds.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute each ViT block's activations in the backward pass instead of keeping them (timm's checkpoint_seq): "
        "less memory, more compute (one more forward pass per block)",
    )
    arch = parser.add_argument_group("model (task 0 only; later tasks inherit it)")
    arch.add_argument("--embed-dim", type=int, default=64, help="ViT width")
    arch.add_argument("--depth", type=int, default=4, help="ViT blocks")
    arch.add_argument("--num-heads", type=int, default=4, help="attention heads")
    arch.add_argument("--mlp-ratio", type=float, default=2.0, help="MLP hidden size / width")
    aug = parser.add_argument_group("token augmentations (input tokens; every probability 0 = off)")
    aug.add_argument("--synonyms", type=Path, default=None, help="synonyms JSON from `tokenforge synonyms` (for --augment-synonym-p)")
    _add_augment_arguments(aug)
    mem = parser.add_argument_group("memory (see tokenforge.memory)")
    mem.add_argument(
        "--memory-method",
        choices=["none", "coreset", "coretokens", "coretokenset", "joint"],
        default="coretokenset",
        help="none: fine-tuning; coreset: whole samples; coretokens: every sample, few tokens each; coretokenset: chosen "
        "samples, their top tokens; joint: no memory, train on all tasks so far (upper bound)",
    )
    mem.add_argument(
        "--memory-selection",
        choices=["random", "class_balanced", "herding", "gradient"],
        default="class_balanced",
        help="which samples are kept (coreset, coretokenset): random, random per class, herding (closest to the class "
        "mean in feature space), gradient (CRAIG-style coreset of last-layer gradients)",
    )
    mem.add_argument(
        "--memory-scorer",
        choices=["rollout", "chefer", "gradcam", "atman", "random"],
        default="random",
        help="which tokens of a kept sample are stored: top ones by attention rollout, gradient-weighted attention "
        "relevance (Chefer), attention GradCAM, AtMan perturbation, or random ones (the control)",
    )
    mem.add_argument("--memory-token-fraction", type=float, default=0.5, help="coretokenset: share of each kept sample's tokens stored, in (0, 1]")
    mem.add_argument(
        "--memory-budget",
        default="10%",
        help="bytes on disk for the memory of all tasks together, or a share of the train token file like '1%%' "
        "(default 10%%; 'none': no limit, then --memory-samples-per-class is needed)",
    )
    mem.add_argument("--memory-samples-per-class", type=int, default=None, help="optional cap on samples kept per class")
    mem.add_argument("--memory-replay-ratio", type=float, default=1.0, help="memory samples replayed per current-task sample in a step")
    mem.add_argument(
        "--input-dropout",
        type=float,
        default=1.0,
        help="from task 1 on: share of current-task batches fed as random subsets of as many tokens as a memory "
        "sample keeps, so the model learns partial inputs and cannot tell replayed samples by their length (0: off)",
    )


def run(args, tracker) -> None:
    import torch
    import torch.nn.functional as F

    from tokenforge.continual.memory import (
        MEMORY_FILE,
        Memory,
        as_tensors,
        build_memory,
        check_minimum,
        read_memory,
        resolve_tokens,
        serialize,
    )
    from tokenforge.engine.checkpoint import Checkpointer, fingerprint
    from tokenforge.engine.train import (
        _augmenter,
        _engine,
        _initial_model,
        _max_rss_mb,
        _plain_model,
        _task_info,
        load_units,
        memory_policy,
        subset,
    )
    from tokenforge.models.vit import save_model
    from tokenforge.runtime import progress, seed_everything

    start = time.perf_counter()
    if not 0 <= args.input_dropout <= 1:
        raise TokenforgeError(f"--input-dropout: must be in [0, 1], got {args.input_dropout}")
    if args.checkpoint_every < 1:
        raise TokenforgeError(f"--checkpoint-every: must be >= 1, got {args.checkpoint_every}")
    if args.log_every < 1:
        raise TokenforgeError(f"--log-every: must be >= 1, got {args.log_every}")
    if args.memory_replay_ratio <= 0:
        raise TokenforgeError(f"memory.replay_ratio: must be > 0, got {args.memory_replay_ratio}")
    seed_everything(args.seed + args.task)
    classes, seen, num_classes, every = _task_info(args.split, args.task)
    model = _initial_model(args, num_classes)
    all_keys, all_labels, all_units = load_units(args.input, args.tokens, args.shards, "train", model.config.patch)
    if tuple(all_units.shape[1:3]) != tuple(model.config.grid):
        raise TokenforgeError(
            f"{args.tokens or args.shards}: grids of {all_units.shape[1]}x{all_units.shape[2]} do not match the "
            f"model's {model.config.grid[0]}x{model.config.grid[1]} (tokens made with another tokenizer?)"
        )
    if args.input == "tokens" and all_units.size and all_units.max() >= model.config.codebook_size:
        raise TokenforgeError(
            f"{args.tokens}: code id {int(all_units.max())} is outside the codebook of {model.config.codebook_size} codes"
        )
    source = args.tokens if args.input == "tokens" else args.shards
    tracker.log_dataset(f"{source.parent.name}/{source.name}", source, "training", {"samples": int(len(all_keys)), "grid": list(model.config.grid)})
    policy = memory_policy(args, model, args.tokens.stat().st_size if args.tokens else None, num_classes)
    split_mask = np.isin(all_labels, every)  # the samples of the task sequence's classes
    split_keys = [k for k, m in zip(all_keys, split_mask) if m]
    policy.tokens = resolve_tokens(policy, split_keys, all_labels[split_mask], all_units[split_mask])
    if policy.keeps_memory and args.task == 0:  # fail now, not after the last task's training
        check_minimum(policy, split_keys, all_labels[split_mask], all_units[split_mask])
    # joint (the upper bound) trains on every task so far; the others on this task's classes only.
    mask = np.isin(all_labels, seen if policy.method == "joint" else classes)
    if not mask.any():
        raise TokenforgeError(f"{args.tokens or args.shards}: no training samples for task {args.task}'s classes {classes}")
    ids = torch.from_numpy(all_units[mask])
    labels = torch.from_numpy(all_labels[mask])
    memory = read_memory(args.previous / MEMORY_FILE) if args.task > 0 and policy.keeps_memory else Memory.empty()
    # Input dropout only while partial memory samples are replayed (tasks > 0), so the model cannot tell them
    # by their length. Not in task 0: there it only slowed learning (a 2-class task stayed at chance for 8 epochs).
    keep = policy.tokens
    dropout = args.input_dropout if len(memory) and 0 < keep < model.num_tokens else 0.0
    replay = max(1, int(round(args.memory_replay_ratio * args.batch_size)))
    augmenter = _augmenter(args, getattr(model, "codebook", None))

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    # Each rank trains on its own slice; slices are padded to equal length (as DistributedSampler does) so
    # every rank takes the same number of steps and no collective waits forever.
    per_rank = math.ceil(len(ids) / world)
    local = (torch.arange(per_rank * world) % len(ids))[rank::world]
    steps_per_epoch = max(1, math.ceil(len(local) / args.batch_size))
    model.vit.set_grad_checkpointing(bool(args.activation_checkpointing))
    engine = _engine(model, args, steps_per_epoch * args.epochs)
    device = engine.device  # this rank's GPU under a GPU launch, else the CPU; batches are made on the CPU, then moved
    if device.type == "cuda":
        # Deterministic mode fills every new tensor with NaN to expose reads of uninitialised memory: on a GPU that
        # was about half of a bf16 ViT-S step's ~5,300 kernel launches (measured with torch.profiler on an H100),
        # and the step is bound by launches. Nothing here reads uninitialised memory; CPU runs keep the default.
        torch.utils.deterministic.fill_uninitialized_memory = False
    accumulation = engine.gradient_accumulation_steps()
    unseen = torch.ones(num_classes, dtype=torch.bool, device=device)
    unseen[seen] = False
    gen = torch.Generator().manual_seed(args.seed * 1000 + args.task)
    mem_ids, mem_pos, mem_labels = as_tensors(memory)

    engine.train()
    step, seen_samples, loss_sum = 0, 0, 0.0
    ckpt = Checkpointer(args.checkpoint_dir, args.checkpoint_every, fingerprint(args), rank) if args.checkpoint_dir else None
    resumed = ckpt.load(engine) if ckpt else None
    start_epoch = 0
    if resumed is not None:
        gen.set_state(resumed["gen"])
        torch.set_rng_state(resumed["torch_rng"])
        if augmenter is not None:
            augmenter.generator.set_state(resumed["augment_rng"])
        start_epoch, step, seen_samples = resumed["epoch"], resumed["step"], resumed["seen_samples"]
        print(f"task {args.task}: resuming from step {step} (epoch {start_epoch}, batch {resumed['batch']}) "
              f"of the checkpoint in {args.checkpoint_dir}", flush=True)

    def checkpoint_state(epoch, batch, order, loss_sum, correct, **extra) -> dict:
        return {"epoch": epoch, "batch": batch, "order": order, "loss_sum": loss_sum, "correct": correct, "step": step,
                "seen_samples": seen_samples, "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "augment_rng": augmenter.generator.get_state() if augmenter is not None else None, **extra}

    t_train = time.perf_counter()
    bar = progress(range(start_epoch, args.epochs), desc=f"task {args.task}", unit="epoch", initial=start_epoch, total=args.epochs)
    for epoch in bar:
        if resumed is not None and epoch == start_epoch:  # mid-epoch: that epoch's order and sums, the next batch
            order, loss_sum, correct, first = resumed["order"], resumed["loss_sum"], resumed["correct"], resumed["batch"]
        else:
            order = local[torch.randperm(len(local), generator=gen)]
            loss_sum, correct, first = 0.0, 0, 0
        for b in range(first, steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            units, targets = ids[idx], F.one_hot(labels[idx], num_classes).float()
            if augmenter is not None:  # augmented grids enter as embedding maps, channels last for `subset`
                units, targets = augmenter.embed(augmenter.augment_ids(units), targets)
                units = units.permute(0, 2, 3, 1)
            if dropout and torch.rand((), generator=gen) < dropout:
                # A random subset of each sample's tokens, as short as a replayed memory sample.
                pos = torch.rand(len(idx), model.num_tokens, generator=gen).argsort(1)[:, :keep].sort(1).values
                logits = engine(subset(units, pos).to(device), pos.to(device))
            else:
                logits = engine((units.permute(0, 3, 1, 2) if units.is_floating_point() else units).to(device))
            # A large finite value, not -inf: soft (CutMix) targets times -inf would give NaN.
            logits = logits.float().masked_fill(unseen, -1e9)
            loss = F.cross_entropy(logits, targets.to(device))
            correct += int((logits.argmax(1).cpu() == labels[idx]).sum())
            if len(memory):
                m = torch.randint(len(memory), (replay,), generator=gen)
                mem_logits = engine(mem_ids[m].to(device), mem_pos[m].to(device)).float().masked_fill(unseen, -1e9)
                loss = loss + F.cross_entropy(mem_logits, mem_labels[m].to(device))
            engine.backward(loss)
            engine.step()
            loss_sum += loss.item() * len(idx)
            seen_samples += len(idx)
            step += 1
            if step % args.log_every == 0:  # step metrics: the curve within an epoch, and the process's peak memory
                tracker.log_metrics(
                    {"step_loss": loss.item(), "step_lr": engine.get_lr()[0],
                     "step_samples_per_s": seen_samples / (time.perf_counter() - t_train), "max_rss_mb": _max_rss_mb()},
                    step=step,
                )
            # Only where an optimizer step just ended: gradients accumulated so far are not in a checkpoint.
            if ckpt is not None and step % accumulation == 0 and ckpt.due(step):
                ckpt.save(engine, checkpoint_state(epoch, b + 1, order, loss_sum, correct), step)
        epoch_loss, epoch_acc = loss_sum / len(local), correct / len(local)
        rate = seen_samples / (time.perf_counter() - t_train)
        bar.set_postfix(loss=f"{epoch_loss:.3f}", acc=f"{epoch_acc:.3f}", refresh=False)
        tracker.log_metrics(
            {"loss": epoch_loss, "train_accuracy": epoch_acc, "lr": engine.get_lr()[0], "samples_per_s": rate},
            step=epoch,
        )

    if resumed is not None and start_epoch >= args.epochs:  # killed after training: straight to the memory
        epoch_loss, epoch_acc, rate = resumed["epoch_loss"], resumed["epoch_acc"], resumed["rate"]
    elif ckpt is not None:  # training done: a kill while building the memory does not train again
        ckpt.save(engine, checkpoint_state(args.epochs, 0, None, loss_sum, correct, epoch_loss=epoch_loss,
                                           epoch_acc=epoch_acc, rate=rate), step)
    model = _plain_model(engine.module, device)
    print(f"task {args.task}: building the memory", flush=True)
    if os.environ.get("TOKENFORGE_TEST_PAUSE_BEFORE_MEMORY"):  # tests: a window to kill the job in this phase
        time.sleep(float(os.environ["TOKENFORGE_TEST_PAUSE_BEFORE_MEMORY"]))
    t_memory = time.perf_counter()
    task_mask = np.isin(all_labels, classes)  # the memory takes this task's samples only, also for joint (which keeps none)
    memory, info = build_memory(
        model,
        memory,
        [k for k, m in zip(all_keys, task_mask) if m],
        all_labels[task_mask],
        all_units[task_mask],
        args.task,
        seen,
        policy,
        seed=args.seed * 1000 + args.task,
    )
    memory_s = time.perf_counter() - t_memory
    blob = serialize(memory, policy.num_codes, policy.num_positions, policy.num_classes)  # zstd-19: once, for digest and file
    digest = hashlib.sha256(blob).hexdigest()
    if world > 1:  # every rank built the memory from the same model and data: check they agree, then rank 0 writes
        import torch.distributed as dist

        digests = [None] * world
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise TokenforgeError(f"task {args.task}: the ranks built different memories ({', '.join(d[:12] for d in digests)})")
        if rank != 0:
            return
    with atomic_dir(args.out) as tmp:
        save_model(model, tmp)
        (tmp / MEMORY_FILE).write_bytes(blob)
        memory_bytes = len(blob)
        stats = {
            "task": args.task,
            "classes": classes,
            "train_samples": int(len(ids)),
            "steps": step,
            "final_loss": epoch_loss,
            "final_train_accuracy": epoch_acc,
            "samples_per_s": rate,
            "memory_bytes": memory_bytes,
            "memory_samples": len(memory),
            "memory_tokens_per_sample": memory.tokens_per_sample,
            "memory_method": policy.method,
            "memory_budget_bytes": policy.budget,
            "memory_samples_per_class": info.get("samples_per_class", {}),
            "memory_build_s": memory_s,
            "world_size": world,
            "device": str(device),
            "deepspeed": {"zero_stage": engine.zero_optimization_stage(), "bf16": engine.bfloat16_enabled(),
                          "gradient_accumulation": accumulation, "activation_checkpointing": bool(args.activation_checkpointing)},
            "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "peak_rss_mb": _max_rss_mb(),
            "memory_sha256": digest,
            "wall_s": time.perf_counter() - start,
        }
        write_json(tmp / "stats.json", stats)
    if ckpt is not None:
        ckpt.clear()
    tracker.log_metrics({k: v for k, v in stats.items() if k in ("final_loss", "memory_bytes", "memory_samples", "memory_build_s")})
    for name in ("stats.json", "model.json"):
        tracker.log_artifact(args.out / name)
    print(
        f"task {args.task}: loss {epoch_loss:.3f}, train accuracy {epoch_acc:.3f}, "
        f"memory {len(memory)} samples x {stats['memory_tokens_per_sample']} tokens = {memory_bytes} bytes"
    )
