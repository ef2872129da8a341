"""One task's training job: the data of the task, the model it starts from, the memory it replays, the
training loop (engine/loop.py) through a DeepSpeed engine, and after training the memory of all tasks so
far (continual/policy.py), written with the model as the job's outputs.

`train_task(args, tracker)` takes the flags of `tokenforge train` (cli/train.py documents each one).
Task 0 starts from a seeded initialisation; task t > 0 from task t-1's model and memory. On a CPU it runs
as one process with gloo; under torchrun or the deepspeed launcher one process per GPU, each on its slice
of the data; the ranks check they built the same memory and rank 0 writes the outputs.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from tokenforge import families
from tokenforge.continual import FILL_INPUTS
from tokenforge.continual.memory import MEMORY_FILE, Memory, read_memory, serialize
from tokenforge.continual.policy import (
    Policy,
    build_memory,
    check_minimum,
    resolve_budget,
    resolved,
)
from tokenforge.continual.replay import Replay, ReplayConfig, fill_value
from tokenforge.continual.shortcut import shortcut_auc
from tokenforge.data.units import load_units
from tokenforge.engine.callbacks import Checkpointing, ProgressBar, Tracking, max_rss_mb
from tokenforge.engine.checkpoint import Checkpointer, fingerprint
from tokenforge.engine.deepspeed import build_engine
from tokenforge.engine.loop import TrainLoop, rank_slice
from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, read_json, write_json
from tokenforge.models.expansion import ExpansionConfig
from tokenforge.models.store import backbone_digest, is_tuned
from tokenforge.models.vit import ModelConfig, TokenViT, load_model, save_model
from tokenforge.runtime import compute_device, seed_everything


@dataclass
class Task:
    """What the split says about the task being trained."""

    index: int
    classes: list[int]  # this task's classes
    seen: list[int]  # the classes of tasks 0..index
    every: list[int]  # the classes of every task of the sequence
    num_classes: int  # size of the label space

    @classmethod
    def read(cls, split_dir: Path, index: int) -> "Task":
        manifest = read_json(split_dir / "tasks.json")
        tasks = manifest["tasks"]
        if not 0 <= index < len(tasks):
            raise TokenforgeError(f"--task {index}: the split has tasks 0..{len(tasks) - 1}")
        seen = [c for t in tasks[: index + 1] for c in t["classes"]]
        return cls(index, tasks[index]["classes"], seen, [c for t in tasks for c in t["classes"]], manifest["num_classes"])


def check_args(args) -> None:
    if args.memory_scorer == "gradient":
        raise TokenforgeError("memory.scorer: gradient scores BLIP's tokens (vqa, captioning); the ViT's gradient-based ones are chefer and gradcam")
    if not 0 <= args.input_dropout <= 1:
        raise TokenforgeError(f"--input-dropout: must be in [0, 1], got {args.input_dropout}")
    if args.checkpoint_every < 1:
        raise TokenforgeError(f"--checkpoint-every: must be >= 1, got {args.checkpoint_every}")
    if args.log_every < 1:
        raise TokenforgeError(f"--log-every: must be >= 1, got {args.log_every}")
    if args.memory_replay_ratio <= 0:
        raise TokenforgeError(f"memory.replay_ratio: must be > 0, got {args.memory_replay_ratio}")
    if args.input_dropout_mode == "token" and args.input_dropout >= 1:
        raise TokenforgeError(f"train.input_dropout: token mode drops each token with this probability; must be < 1, got {args.input_dropout}")
    if args.memory_view == "fill":
        fits = FILL_INPUTS[args.memory_fill]
        if args.input != fits:
            raise TokenforgeError(f"memory.fill: {args.memory_fill} is for input {fits}, not {args.input}")
        if args.memory_fill == "mtm" and args.fill_model is None:
            raise TokenforgeError("--fill-model: required with memory.fill mtm (a `tokenforge pretrain --mode mtm` output)")
    expansion_config(args)  # its settings fail now, the depth check once the model is there
    if args.prompt_tokens < 0 or not 0 <= args.prompt_dropout < 1:
        raise TokenforgeError(f"train.prompts: tokens >= 0 and dropout in [0, 1), got {args.prompt_tokens} and {args.prompt_dropout}")
    if args.prompt_tokens and args.task == 0 and args.init is None:
        raise TokenforgeError("train.prompts: prompt tuning trains prompts on a frozen backbone; task 0 needs one from --init (pretrain)")
    if args.attention == "routed" and (not args.orders or min(args.orders) < 0 or len(set(args.orders)) < len(args.orders)):
        raise TokenforgeError(f"train.orders: distinct whole numbers >= 0 (0 = global), at least one, got {args.orders}")


def expansion_config(args) -> ExpansionConfig | None:
    """The token expansion schedule of the `--toe-*` flags, or None when it is off."""
    if not args.toe_enabled:
        return None
    return ExpansionConfig(steps=tuple(args.toe_steps), keep=tuple(args.toe_keep), r0=args.toe_r0,
                           chunks=args.toe_chunks, after=args.toe_after)


def uses_mask_token(args) -> bool:
    return args.memory_view == "fill" and args.memory_fill == "mask"


def initial_model(args, num_classes: int) -> TokenViT:
    """Task t-1's model for t > 0; for task 0 a seeded initialisation on the tokenizer's grid."""
    if args.task > 0:
        if args.previous is None:
            raise TokenforgeError(f"--previous: required for task {args.task} (task {args.task - 1}'s output)")
        model = load_model(args.previous)
        if model.config.input != args.input:
            raise TokenforgeError(f"--previous {args.previous}: a model of input {model.config.input!r}, not {args.input!r}")
        if uses_mask_token(args) and not model.config.mask_token:
            raise TokenforgeError(f"--previous {args.previous}: a model without a mask token; memory.fill mask needs one from task 0")
        if args.head == "reset":  # a fresh head, seeded like everything else in this task
            reset_head(model)
        keep_prompts(model, args)
        return model  # its attention too: train.attention, orders and routing act on task 0 only
    from tokenforge.tokenizer.vq import load_codebook

    tok = read_json(args.tokenizer / "config.json")
    if args.init is not None:  # a pretrained backbone (engine/pretrain.py), a fresh head
        from tokenforge.engine.pretrain import init_from

        codebook = load_codebook(args.tokenizer) if args.input == "tokens" else None
        model = init_from(args.init, num_classes, uses_mask_token(args), codebook, args.input)
        if tuple(model.config.grid) != tuple(tok["grid"]):
            raise TokenforgeError(f"--init {args.init}: a model of grid {model.config.grid}, the tokenizer's is {tuple(tok['grid'])}")
        options = attention_options(args)
        if args.prompt_tokens and any(getattr(model.config, k) != v for k, v in options.items()):
            raise TokenforgeError("train.prompts: a frozen backbone would keep the routers new to the --init model (train.attention "
                                  "routed) at their random start; prompt-tune a routed --init model or global attention")
        return with_prompts(with_attention(model, args), args)
    if args.input == "tokens":
        codebook = load_codebook(args.tokenizer)
        sizes = {"codebook_size": codebook.shape[0], "code_dim": codebook.shape[1]}
    else:  # the same grid as the tokens: one patch of downsample x downsample pixels per token
        codebook = None
        sizes = {"codebook_size": 0, "code_dim": tok["downsample"] ** 2 * tok["channels"], "patch": tok["downsample"]}
    arch = {name: getattr(args, name) for name in ("embed_dim", "depth", "num_heads", "mlp_ratio")}
    config = ModelConfig(
        grid=tuple(tok["grid"]), input=args.input, **sizes, num_classes=num_classes, **arch, mask_token=uses_mask_token(args),
        **attention_options(args),
    )  # fmt: skip
    return TokenViT(config, codebook)


def attention_options(args) -> dict:
    """The ModelConfig fields of --attention, --orders and --routing; none for global attention, so a global model's
    config (and model.json) is what it was before routed attention existed."""
    if args.attention == "global":
        return {}
    return {"attention": args.attention, "orders": tuple(args.orders), "routing": args.routing}


def with_attention(model: TokenViT, args) -> TokenViT:
    """A pretrained start (--init) with the attention of the flags: routed, its weights load into everything but the
    new routers, which start fresh (seeded)."""
    options = attention_options(args)
    if not options or all(getattr(model.config, k) == v for k, v in options.items()):
        return model
    routed = TokenViT(replace(model.config, **options), getattr(model, "codebook", None))
    try:
        missing, unexpected = routed.load_state_dict(model.state_dict(), strict=False)
    except RuntimeError as exc:  # a routed start with other orders: router shapes differ
        raise TokenforgeError(f"--init {args.init}: weights do not fit this routed model ({str(exc).splitlines()[-1].strip()})") from None
    if unexpected or any(".attn.router." not in k for k in missing):
        raise TokenforgeError(f"--init {args.init}: weights do not fit a routed model ({(unexpected + missing)[0]})")
    return routed


def prompt_options(args) -> dict:
    """The ModelConfig fields of --prompt-tokens, --prompt-deep and --prompt-dropout (all off while tokens is 0)."""
    if not args.prompt_tokens:
        return {"prompt_tokens": 0, "prompt_deep": False, "prompt_dropout": 0.0}
    return {"prompt_tokens": args.prompt_tokens, "prompt_deep": bool(args.prompt_deep), "prompt_dropout": float(args.prompt_dropout)}


def with_prompts(model: TokenViT, args) -> TokenViT:
    """A pretrained start (--init) with the prompts of the flags: its weights, seeded fresh prompts, frozen backbone."""
    options = prompt_options(args)
    if all(getattr(model.config, k) == v for k, v in options.items()):
        return model
    prompted = TokenViT(replace(model.config, **options), getattr(model, "codebook", None))
    state = {k: v for k, v in model.state_dict().items() if "prompt" not in k}
    missing, unexpected = prompted.load_state_dict(state, strict=False)
    if unexpected or any("prompt" not in k for k in missing):
        raise TokenforgeError(f"--init {args.init}: weights do not fit a prompted model ({(unexpected + missing)[0]})")
    return prompted


def keep_prompts(model: TokenViT, args) -> None:
    """Task t > 0: the flags' prompts must be task t-1's (train.prompts is set at task 0); the dropout is the flags'."""
    options, config = prompt_options(args), model.config

    def said(tokens: int, deep: bool) -> str:
        return f"{tokens} {'deep' if deep else 'shallow'} prompt tokens" if tokens else "no prompt tokens"

    if (config.prompt_tokens, config.prompt_deep) != (options["prompt_tokens"], options["prompt_deep"]):
        raise TokenforgeError(f"--previous {args.previous}: a model with {said(config.prompt_tokens, config.prompt_deep)}, the flags "
                              f"ask for {said(options['prompt_tokens'], options['prompt_deep'])} (train.prompts is set at task 0)")
    if config.prompt_tokens:
        model.config = replace(config, prompt_dropout=options["prompt_dropout"])
        model.prompt_dropout.p = options["prompt_dropout"]


def frozen_backbone(model: TokenViT) -> dict[str, torch.Tensor] | None:
    """A prompted model's frozen tensors (every state-dict entry but the prompts and the head) as training starts,
    copied: the trained model gets them back bit for bit (bf16 training holds only their rounding); None unprompted."""
    if not model.config.prompt_tokens:
        return None
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items() if not is_tuned(k)}


def reset_head(model: TokenViT) -> None:
    """Re-initialise the classifier head as timm initialises it (truncated normal weights, std 0.02; zero bias)."""
    head = model.vit.head
    with torch.no_grad():
        torch.nn.init.trunc_normal_(head.weight, std=0.02)
        torch.nn.init.zeros_(head.bias)


def plain_model(module, device, frozen: dict[str, torch.Tensor] | None = None) -> TokenViT:
    """The trained weights in a fresh fp32 model on `device`, in eval mode: memory building and saving see the same
    model whatever the training precision, and without activation checkpointing or DeepSpeed's hooks.

    `frozen` (`frozen_backbone` before training): a prompted model's frozen tensors, checked to be what the engine
    still holds (themselves, or their bf16 rounding) and taken from there, bit for bit."""
    held_state = module.state_dict()
    state = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in held_state.items()}
    for name, start in (frozen or {}).items():
        held = held_state[name].detach().cpu()
        if not torch.equal(held, start.to(held.dtype)):
            raise TokenforgeError(f"prompt tuning: the frozen backbone changed in training ({name})")
        state[name] = start
    plain = TokenViT(module.config, state.get("codebook"))
    plain.load_state_dict(state)
    return plain.to(device).eval()


@dataclass
class Units:
    """Every training sample of the split: keys, labels (N,), units (N, h, w[, F])."""

    keys: list[str]
    labels: np.ndarray
    units: np.ndarray

    def where(self, classes: list[int]) -> "Units":
        mask = np.isin(self.labels, classes)
        return Units([k for k, m in zip(self.keys, mask) if m], self.labels[mask], self.units[mask])


def training_units(args, model: TokenViT, tracker) -> Units:
    """The split's training units, checked against the model (grid, codebook), logged as the run's dataset."""
    source = args.tokens if args.input == "tokens" else args.shards
    data = Units(*load_units(args.input, args.tokens, args.shards, "train", model.config.patch))
    if tuple(data.units.shape[1:3]) != tuple(model.config.grid):
        raise TokenforgeError(
            f"{source}: grids of {data.units.shape[1]}x{data.units.shape[2]} do not match the "
            f"model's {model.config.grid[0]}x{model.config.grid[1]} (tokens made with another tokenizer?)"
        )
    if args.input == "tokens" and data.units.size and data.units.max() >= model.config.codebook_size:
        raise TokenforgeError(f"{source}: code id {int(data.units.max())} is outside the codebook of {model.config.codebook_size} codes")
    tracker.log_dataset(f"{source.parent.name}/{source.name}", source, "training", {"samples": int(len(data.keys)), "grid": list(model.config.grid)})
    return data


def memory_policy(args, model: TokenViT, task: Task, data: Units) -> Policy:
    """The buffer policy of the `--memory-*` flags, its token count fixed for the task sequence's samples."""
    policy = Policy(
        method=args.memory_method,
        selection=args.memory_selection,
        scorer=args.memory_scorer,
        token_fraction=args.memory_token_fraction,
        budget=resolve_budget(args.memory_budget, args.tokens.stat().st_size if args.tokens else None),
        samples_per_class=args.memory_samples_per_class,
        num_codes=model.config.codebook_size or 256,
        num_positions=model.num_tokens,
        num_classes=task.num_classes,
    )
    sequence = data.where(task.every)  # the samples of the task sequence's classes
    policy = resolved(policy, sequence.keys, sequence.labels, sequence.units)
    if policy.keeps_memory and task.index == 0:  # fail now, not after the last task's training
        check_minimum(policy, sequence.keys, sequence.labels, sequence.units)
    return policy


def augmenter_for(args, codebook):
    """The TokenAugmenter of the `--augment-*` flags, or None when every augmentation is off."""
    from tokenforge.data.augment import TokenAugmenter, load_synonyms
    from tokenforge.data.augment_config import AugmentConfig

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
    adapter = None
    if config.tokenadapt_p > 0:  # the frozen TokenAdapt pair (`tokenforge tokenadapt`), checked against the codebook
        if getattr(args, "adapter", None) is None:
            raise TokenforgeError("--adapter: required when augment.tokenadapt_p > 0 (a `tokenforge tokenadapt` output)")
        from tokenforge.tokenizer.adapt import load_adapter

        adapter = load_adapter(args.adapter)
    return TokenAugmenter(config, codebook, synonyms, seed=args.seed * 1000 + args.task, adapter=adapter)


def train_task(args, tracker) -> None:
    """Train task `args.task`, build the memory of all tasks so far, write model, memory and stats to `args.out`."""
    start = time.perf_counter()
    check_args(args)
    seed_everything(args.seed + args.task)
    task = Task.read(args.split, args.task)
    model = initial_model(args, task.num_classes)
    data = training_units(args, model, tracker)
    policy = memory_policy(args, model, task, data)
    # joint (the upper bound) trains on every task so far; the others on this task's classes only.
    train = data.where(task.seen if policy.method == "joint" else task.classes)
    if not len(train.keys):
        raise TokenforgeError(f"{args.tokens or args.shards}: no training samples for task {args.task}'s classes {task.classes}")
    memory = read_memory(args.previous / MEMORY_FILE) if args.task > 0 and policy.keeps_memory else Memory.empty()
    frozen = frozen_backbone(model)
    backbone = model.config.backbone_sha256 if args.task > 0 else None  # prompted: task t-1's, checked by load_model
    loop = make_loop(args, tracker, model, task, train, memory, policy)
    state = loop.run()
    model = plain_model(loop.engine.module, loop.device, frozen)
    if backbone is not None and backbone_digest(model) != backbone:
        raise TokenforgeError(f"task {args.task}: the frozen backbone no longer matches task {args.task - 1}'s backbone_sha256")
    memory, info, memory_s = after_training(args, model, memory, data.where(task.classes), task, policy)
    seen = data.where(task.seen)  # the shortcut probe: replayed views against the same samples whole
    info["shortcut_auc"] = shortcut_auc(model, memory, loop.replay, seen.keys, seen.units, seed=args.seed)
    outputs = Outputs(args, task, policy, loop, state, len(train.keys), start)
    try:
        outputs.write(model, memory, info, memory_s, tracker)
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """Under several processes: wait until rank 0 has written the outputs, then take the process group down.

    A rank that simply exited while the others were still in the group sometimes aborted in the C++ teardown
    ("terminate called without an active exception", SIGABRT seen once in 2 runs of the two-process test), and
    torchrun then failed the job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()


def make_loop(args, tracker, model, task: Task, train: Units, memory: Memory, policy: Policy) -> TrainLoop:
    """The training loop of this task: replay, family, augmentations, DeepSpeed engine and callbacks."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ids, labels = torch.from_numpy(train.units), torch.from_numpy(train.labels)
    local = rank_slice(len(ids), rank, world)
    generator = torch.Generator().manual_seed(args.seed * 1000 + args.task)
    replay_batch = max(1, int(round(args.memory_replay_ratio * args.batch_size)))
    augmenter = augmenter_for(args, getattr(model, "codebook", None))
    if augmenter is not None and args.memory_view == "fill":
        raise TokenforgeError("memory.view: fill does not combine with token augmentations yet (they work on embeddings)")
    steps = max(1, -(-len(local) // args.batch_size))
    replay = Replay(memory, replay_config(args, model, train, policy, replay_batch, steps), generator)
    family = families.get("classification", num_classes=task.num_classes, seen=task.seen)
    model.vit.set_grad_checkpointing(bool(args.activation_checkpointing))
    model.set_fused_attention(args.fused_attention)  # training only, as checkpointing: plain_model's copy is timm's
    model.set_expansion(expansion_config(args))  # training only: plain_model's copy for the memory has it off
    steps_per_epoch = max(1, -(-len(local) // args.batch_size))
    engine = build_engine(model, args, steps_per_epoch * args.epochs)
    callbacks = [ProgressBar(args.task), Tracking(tracker, args.log_every)]
    ckpt = Checkpointer(args.checkpoint_dir, args.checkpoint_every, fingerprint(args), rank) if args.checkpoint_dir else None
    if ckpt is not None:  # first: a resume restores the state the others read
        callbacks.insert(0, Checkpointing(ckpt, args.task, augmenter))
    loop = TrainLoop(engine, family, replay, ids, labels, local=local, epochs=args.epochs, batch_size=args.batch_size,
                     generator=generator, augmenter=augmenter, callbacks=callbacks)
    loop.checkpointer = ckpt  # removed once the outputs are written
    return loop


def replay_config(args, model: TokenViT, train: Units, policy: Policy, batch: int, steps_per_epoch: int) -> ReplayConfig:
    """The replay settings of the flags; a filled view's value comes from this task's own training units."""
    fill = fill_value(train.units, args.memory_fill, model.config.codebook_size) if args.memory_view == "fill" else None
    predict = None
    if args.memory_view == "fill" and args.memory_fill == "mtm":
        from tokenforge.models.mtm import MTMFiller

        predict = MTMFiller(args.fill_model, device=compute_device())
        predict.check_codebook(model.codebook, f"--fill-model {args.fill_model}")
    return ReplayConfig(
        batch=batch, keep=policy.tokens, grid=tuple(model.config.grid), input_dropout=args.input_dropout,
        dropout_mode=args.input_dropout_mode, view=args.memory_view, fill=fill, schedule=args.memory_schedule,
        steps_per_epoch=steps_per_epoch, seed=args.seed * 1000 + args.task, predict=predict,
    )  # fmt: skip


def after_training(args, model, memory: Memory, current: Units, task: Task, policy: Policy):
    """The memory of all tasks so far: the previous one plus this task's samples (also for joint, which keeps none)."""
    print(f"task {args.task}: building the memory", flush=True)
    if os.environ.get("TOKENFORGE_TEST_PAUSE_BEFORE_MEMORY"):  # tests: a window to kill the job in this phase
        time.sleep(float(os.environ["TOKENFORGE_TEST_PAUSE_BEFORE_MEMORY"]))
    t_memory = time.perf_counter()
    memory, info = build_memory(model, memory, current.keys, current.labels, current.units, args.task, task.seen, policy,
                                seed=args.seed * 1000 + args.task)
    return memory, info, time.perf_counter() - t_memory


class Outputs:
    """The job's outputs: model, memory file and stats, written by rank 0 once every rank built the same memory."""

    def __init__(self, args, task: Task, policy: Policy, loop: TrainLoop, state, train_samples: int, start: float):
        self.args, self.task, self.policy, self.loop, self.state = args, task, policy, loop, state
        self.train_samples, self.start = train_samples, start

    def write(self, model, memory: Memory, info: dict, memory_s: float, tracker) -> None:
        args, policy = self.args, self.policy
        blob = serialize(memory, policy.num_codes, policy.num_positions, policy.num_classes)  # zstd-19: once, for digest and file
        digest = hashlib.sha256(blob).hexdigest()
        if not self._agreed(digest):
            return
        with atomic_dir(args.out) as tmp:
            save_model(model, tmp)
            (tmp / MEMORY_FILE).write_bytes(blob)
            stats = self.stats(memory, info, memory_s, len(blob), digest)
            write_json(tmp / "stats.json", stats)
        if self.loop.checkpointer is not None:
            self.loop.checkpointer.clear()
        logged = ("final_loss", "memory_bytes", "memory_samples", "memory_build_s", "shortcut_auc")
        tracker.log_metrics({k: v for k, v in stats.items() if k in logged and v is not None})
        for name in ("stats.json", "model.json"):
            tracker.log_artifact(args.out / name)
        s = self.state
        print(f"task {args.task}: loss {s.epoch_loss:.3f}, train accuracy {s.epoch_acc:.3f}, "
              f"memory {len(memory)} samples x {stats['memory_tokens_per_sample']} tokens = {len(blob)} bytes")

    def _agreed(self, digest: str) -> bool:
        """Whether this rank writes: every rank built the memory from the same model and data; check they agree."""
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if world == 1:
            return True
        import torch.distributed as dist

        digests = [None] * world
        dist.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise TokenforgeError(f"task {self.args.task}: the ranks built different memories ({', '.join(d[:12] for d in digests)})")
        return rank == 0

    def stats(self, memory: Memory, info: dict, memory_s: float, memory_bytes: int, digest: str) -> dict:
        args, engine, s, device = self.args, self.loop.engine, self.state, self.loop.device
        return {
            "task": args.task, "classes": self.task.classes, "train_samples": self.train_samples, "steps": s.step,
            "final_loss": s.epoch_loss, "final_train_accuracy": s.epoch_acc, "samples_per_s": s.rate,
            "memory_bytes": memory_bytes, "memory_samples": len(memory), "memory_tokens_per_sample": memory.tokens_per_sample,
            "memory_method": self.policy.method, "memory_budget_bytes": self.policy.budget,
            "memory_samples_per_class": info.get("samples_per_class", {}), "memory_build_s": memory_s,
            "world_size": int(os.environ.get("WORLD_SIZE", 1)), "device": str(device),
            "deepspeed": {"zero_stage": engine.zero_optimization_stage(), "bf16": engine.bfloat16_enabled(),
                          "gradient_accumulation": engine.gradient_accumulation_steps(),
                          "activation_checkpointing": bool(args.activation_checkpointing)},
            "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "peak_rss_mb": max_rss_mb(), "memory_sha256": digest, "wall_s": time.perf_counter() - self.start,
            "shortcut_auc": info.get("shortcut_auc"),
        }
