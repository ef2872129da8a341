r"""Train the token ViT on one task through a DeepSpeed engine, replaying the earlier tasks' memory.

  tokenforge train --tokens tokens/train.parquet --tokenizer tokenizer/ --split split/ --task 1 \
      --previous train/task-0 --deepspeed-config config/deepspeed.json --out train/task-1

Task 0 starts from a seeded initialisation; task t > 0 starts from task t-1's model and replays its
memory: every step adds CE(memory batch) to CE(current batch), with memory samples fed as short
sequences of their kept tokens. Logits are restricted to the classes seen so far. After training,
the memory of all tasks so far is rebuilt within the byte budget (older tasks give up their
last-ranked samples, class-balanced; see tokenforge.continual). On a CPU it runs as one process with gloo; under
`torchrun`/`deepspeed` the same code runs one process per GPU.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from tokenforge.continual import DROPOUT_MODES, FILLS, METHODS, SCHEDULES, SCORERS, SELECTIONS, VIEWS
from tokenforge.data.augment_config import FIELD_HELP, AugmentConfig
from tokenforge.engine import ADAMW_IMPLEMENTATIONS, COMPILE_MODES, PRECISIONS, ZERO_STAGES
from tokenforge.families import FAMILIES
from tokenforge.models import HEADS, INPUTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for add in (_data, _optimisation, _deepspeed, _speed, _model, _model_options, _attention_kernel, _augmentations, _memory,
                _replay, _multimodal):  # fmt: skip
        add(parser)


def _multimodal(parser: argparse.ArgumentParser) -> None:
    mm = parser.add_argument_group(
        "task family (--family; vqa and captioning: BLIP from transformers on the same tokens; the model flags "
        "--embed-dim, --depth (vision and text layers each), --num-heads, --mlp-ratio size it, or --init's model; the "
        "memory flags method (none, coreset, coretokenset, joint), selection (random, class_balanced), scorer (atman, "
        "gradient, random), token fraction, budget and replay ratio apply, and several processes; the ViT-only "
        "options (attention, ToE, prompts, augmentations, fill views) do not)"
    )
    mm.add_argument(
        "--family",
        choices=FAMILIES,
        default="classification",
        help="classification: the ViT on class labels; vqa/captioning: BLIP answers questions or writes captions; or "
        "a family of your own by import path (the split must be of the same family: `tokenforge split --family`)",
    )
    mm.add_argument("--text-max-len", type=int, default=24, help="text ids per question, answer or caption (longer ones are cut)")
    mm.add_argument(
        "--blind",
        action="store_true",
        help="vqa/captioning, task 0: the question-only control, the same BLIP given no image units (its vision model "
        "sees its class token alone); later tasks inherit it. Answers it gets right need no image",
    )
    mm.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="vqa/captioning, task 0: a local BLIP folder (save_pretrained layout) to start from instead of a small BLIP "
        "from scratch; its vision embeddings give way to the token stem (not with --init)",
    )


def _data(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--input",
        choices=INPUTS,
        default="tokens",
        help="train on VQ tokens, or on pixel patches of the same grid (the baseline; needs --shards)",
    )
    data.add_argument("--tokens", type=Path, default=None, help="train token Parquet from `tokenforge tokenize` (input tokens)")
    data.add_argument("--shards", type=Path, default=None, help="WebDataset shard directory (input pixels)")
    data.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory (codebook and token grid)")
    data.add_argument("--split", type=Path, required=True, help="directory of task manifests from `tokenforge split`")
    data.add_argument("--task", type=int, required=True, help="index of the task to train (0-based)")
    data.add_argument("--previous", type=Path, default=None,
                      help="task t-1's output directory (model + memory); required for t > 0 (VQA and captioning with "
                      "--memory-method joint: without it a fresh model trains on every task so far at once)")
    data.add_argument("--out", type=Path, required=True, help="output directory: model, memory.arrows.zst, stats.json")
    data.add_argument(
        "--init",
        type=Path,
        default=None,
        help="task 0: start from this pretrained model (`tokenforge pretrain` output) with a fresh head; its "
        "architecture replaces the --embed-dim/--depth/... flags (later tasks ignore it)",
    )
    data.add_argument(
        "--fill-model",
        type=Path,
        default=None,
        help="--memory-fill mtm: the masked-token model (`tokenforge pretrain --mode mtm` output) that predicts the "
        "non-kept tokens of replayed grids",
    )
    data.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="--augment-tokenadapt-p > 0: the frozen TokenAdapt pair (`tokenforge tokenadapt` output), made for this "
        "run's tokenizer",
    )


def _optimisation(parser: argparse.ArgumentParser) -> None:
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
    opt.add_argument(
        "--head",
        choices=HEADS,
        default="keep",
        help="task t > 0: keep task t-1's classifier head, or reset it to a fresh seeded one (the paper re-initialises it)",
    )
    opt.add_argument("--log-every", type=int, default=10, help="log step metrics (loss, lr, samples/s, peak memory) every N steps")


def _deepspeed(parser: argparse.ArgumentParser) -> None:
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


def _speed(parser: argparse.ArgumentParser) -> None:
    speed = parser.add_argument_group(
        "speed (see tokenforge.engine.speed; benchmarks/throughput.py measures each): how fast a step runs; lean engine "
        "and CPU heap cache give the same bits, compile and other AdamW implementations round differently"
    )
    speed.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="off",
        help="torch.compile the model, one graph per input shape (full grid, each subset length, a short last batch), "
        "each compiled when first met (tens of seconds on a CPU): default; reduce-overhead (also CUDA graphs on a "
        "GPU); max-autotune (also tries GEMM kernels, compiles longest); off: eager",
    )
    speed.add_argument(
        "--adamw",
        choices=ADAMW_IMPLEMENTATIONS,
        default="auto",
        help="torch's AdamW implementation: auto (fused on a GPU, for-loop on a CPU), for-loop, foreach (the for-loop's bits, "
        "slower on a CPU), fused (one kernel per tensor; deterministic on a CPU too, faster, rounds differently)",
    )
    speed.add_argument(
        "--lean-engine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip DeepSpeed's per-step work that changes nothing here: one process's gradient all-reduce, per-parameter "
        "clipping ops (foreach instead), bf16's per-parameter overflow check (the step's norm check repeats it), bf16's "
        "per-parameter master-weight step (foreach ops instead); the same bits",
    )
    speed.add_argument(
        "--cpu-heap-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CPU: keep freed memory in the process heap (glibc), so each step reuses the last one's pages instead of "
        "faulting in fresh ones; memory a step needed stays with the process",
    )


def _model(parser: argparse.ArgumentParser) -> None:
    arch = parser.add_argument_group("model (task 0 only; later tasks inherit it)")
    arch.add_argument("--embed-dim", type=int, default=64, help="ViT width")
    arch.add_argument("--depth", type=int, default=4, help="ViT blocks")
    arch.add_argument("--num-heads", type=int, default=4, help="attention heads")
    arch.add_argument("--mlp-ratio", type=float, default=2.0, help="MLP hidden size / width")


def _model_options(parser: argparse.ArgumentParser) -> None:
    """Each model option's flags (routed attention, prompts, token expansion: tokenforge.models.options)."""
    from tokenforge.models.options.base import model_options

    for option in model_options():
        option.add_arguments(parser)


def _attention_kernel(parser: argparse.ArgumentParser) -> None:
    kernel = parser.add_argument_group("attention kernel (train.fused_attention)")
    kernel.add_argument(
        "--fused-attention",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train with fused attention (F.scaled_dot_product_attention, timm's default) or the unfused "
        "softmax(q k^T) v, for comparison; memory scoring and evaluation are unaffected",
    )


def _augmentations(parser: argparse.ArgumentParser) -> None:
    aug = parser.add_argument_group("token augmentations (input tokens; every probability 0 = off)")
    aug.add_argument("--synonyms", type=Path, default=None, help="synonyms JSON from `tokenforge synonyms` (for --augment-synonym-p)")
    for f in fields(AugmentConfig):  # one --augment-<field> flag per field: config keys and flags never drift apart
        flag = f"--augment-{f.name.replace('_', '-')}"
        if isinstance(f.default, tuple):
            aug.add_argument(flag, type=float, nargs=len(f.default), default=f.default, metavar=("LOW", "HIGH"), help=FIELD_HELP.get(f.name, " "))
        else:
            aug.add_argument(flag, type=type(f.default), default=f.default, help=FIELD_HELP.get(f.name, " "))


def _memory(parser: argparse.ArgumentParser) -> None:
    mem = parser.add_argument_group("memory (see tokenforge.continual)")
    mem.add_argument(
        "--memory-method",
        choices=METHODS,
        default="coretokenset",
        help="none: fine-tuning; coreset: whole samples; coretokens: every sample, few tokens each; coretokenset: chosen "
        "samples, their top tokens; joint: no memory, train on all tasks so far (upper bound)",
    )
    mem.add_argument(
        "--memory-selection",
        choices=SELECTIONS,
        default="class_balanced",
        help="which samples are kept (coreset, coretokenset): random, random per class, herding (closest to the class "
        "mean in feature space), gradient (CRAIG-style coreset of last-layer gradients)",
    )
    mem.add_argument(
        "--memory-scorer",
        choices=SCORERS,
        default="random",
        help="which tokens of a kept sample are stored: top ones by attention rollout, gradient-weighted attention "
        "relevance (Chefer), attention GradCAM, AtMan perturbation, or random ones (the control); vqa/captioning: "
        "atman, gradient (gradient x input) or random",
    )
    mem.add_argument("--memory-token-fraction", type=float, default=0.5, help="coretokenset: share of each kept sample's tokens stored, in (0, 1]")
    mem.add_argument(
        "--memory-budget",
        default="10%",
        help="bytes on disk for the memory of all tasks together, or a share of the train token file like '1%%' "
        "(default 10%%; 'none': no limit, then --memory-samples-per-class is needed)",
    )
    mem.add_argument("--memory-samples-per-class", type=int, default=None, help="optional cap on samples kept per class")


def _replay(parser: argparse.ArgumentParser) -> None:
    mem = parser.add_argument_group("replay (see tokenforge.continual.replay)")
    mem.add_argument("--memory-replay-ratio", type=float, default=1.0, help="memory samples replayed per current-task sample in a step")
    mem.add_argument(
        "--input-dropout",
        type=float,
        default=1.0,
        help="from task 1 on: share of current-task batches fed as random subsets of as many tokens as a memory "
        "sample keeps, so the model learns partial inputs and cannot tell replayed samples by their length (0: off)",
    )
    mem.add_argument(
        "--input-dropout-mode",
        choices=DROPOUT_MODES,
        default="batch",
        help="batch: whole batches as subsets (above), from task 1 on; token: the paper's, from task 0 on each token "
        "of a current-task input is dropped with probability --input-dropout (e.g. 0.9), its position kept",
    )
    mem.add_argument(
        "--memory-view",
        choices=VIEWS,
        default="subset",
        help="subset: a kept sample is replayed as its kept tokens only; fill: as a whole grid with the other "
        "positions filled by --memory-fill (input-dropped current batches too)",
    )
    mem.add_argument(
        "--memory-fill",
        choices=FILLS,
        default="frequent",
        help="view fill: frequent (the current task's most frequent code), mask (a learned mask embedding; tokens), "
        "mean (the mean patch; pixels, as the paper blanks patches to the mean colour), mtm (the codes a pretrained "
        "masked-token model predicts from the kept ones; tokens, needs --fill-model)",
    )
    mem.add_argument(
        "--memory-schedule",
        choices=SCHEDULES,
        default="step",
        help="step: replay-ratio x batch memory rows drawn every step; epoch: every memory row once per epoch, "
        "weighted like current rows (the paper's loader)",
    )


def run(args, tracker) -> None:
    from tokenforge.engine.train import train_task

    train_task(args, tracker)  # the family (--family) supplies its part: tokenforge.families
