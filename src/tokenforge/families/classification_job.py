"""The classification family's side of one task's training job (the `TaskJob` of engine/job.py, run by the shared
trainer engine/train.py): the split's training units of the task's classes, the TokenViT it trains (families/
vit_start.py), the loop with the family's cross-entropy over the classes seen so far, token augmentations and the
replay views, and after training the memory of the buffer policy (continual/policy.py `build_memory`: selection,
token attribution, the budget fit) and the shortcut probe.

The job holds only the samples it trains on (the task's classes, or the seen ones for a method that `trains_on_seen`),
code ids at their narrow type (data/units.py); other rows are read when needed and dropped: one sample per class of
the sequence for the budget check, every sample of it for a method that fits its tokens to all (coretokens), the
memory's own samples for the shortcut probe.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch

from tokenforge.continual.fills import fill_spec
from tokenforge.continual.memory import MEMORY_FILE, Memory, read_memory
from tokenforge.continual.methods import memory_method
from tokenforge.continual.policy import Policy, build_memory, check_minimum, resolve_budget, resolved
from tokenforge.continual.replay import Replay, ReplayConfig, fill_value
from tokenforge.continual.scorers import scorer_for
from tokenforge.data.units import Units, class_examples, split_units, wide
from tokenforge.engine.deepspeed import build_engine
from tokenforge.engine.job import Task, TaskJob, callbacks, check_common, rank_and_world
from tokenforge.engine.loop import TrainLoop, rank_slice
from tokenforge.errors import TokenforgeError
from tokenforge.families.vit_start import frozen_backbone, initial_model, plain_model
from tokenforge.models.options.base import model_options
from tokenforge.models.store import backbone_digest
from tokenforge.models.vit import TokenViT, save_model
from tokenforge.runtime import compute_device, task_seed


def check_args(args) -> None:
    memory_method(args.memory_method, "classification")  # one-line errors for what this family is not offered
    scorer_for(args.memory_scorer, "classification")  # gradient (x input) is BLIP's; the ViT's are chefer and gradcam
    check_common(args)
    if args.input_dropout_mode == "token" and args.input_dropout >= 1:
        raise TokenforgeError(f"train.input_dropout: token mode drops each token with this probability; must be < 1, got {args.input_dropout}")
    if args.memory_view == "fill":
        fill = fill_spec(args.memory_fill)
        if args.input != fill.input:
            raise TokenforgeError(f"memory.fill: {args.memory_fill} is for input {fill.input}, not {args.input}")
        if fill.needs_fill_model and args.fill_model is None:
            raise TokenforgeError(f"--fill-model: required with memory.fill {args.memory_fill} (a `tokenforge pretrain --mode mtm` output)")
    for option in model_options():
        option.check(args)


def training_units(args, model: TokenViT, tracker, classes: list[int]) -> Units:
    """The split's training units of `classes`, checked against the model (grid, codebook), the split logged as the
    run's dataset."""
    source = args.tokens if args.input == "tokens" else args.shards
    data = split_units(args.input, args.tokens, args.shards, "train", model.config.patch, classes=classes)
    if tuple(data.units.shape[1:3]) != tuple(model.config.grid):
        raise TokenforgeError(
            f"{source}: grids of {data.units.shape[1]}x{data.units.shape[2]} do not match the "
            f"model's {model.config.grid[0]}x{model.config.grid[1]} (tokens made with another tokenizer?)"
        )
    if args.input == "tokens" and data.units.size and data.units.max() >= model.config.codebook_size:
        raise TokenforgeError(f"{source}: code id {int(data.units.max())} is outside the codebook of {model.config.codebook_size} codes")
    tracker.log_dataset(f"{source.parent.name}/{source.name}", source, "training", {"samples": int(data.total), "grid": list(model.config.grid)})
    return data


def sequence_units(args, model: TokenViT, classes: list[int], every_sample: bool) -> Units:
    """The task sequence's samples (of `classes`): all of them, or only the first of each class."""
    if every_sample:
        return split_units(args.input, args.tokens, args.shards, "train", model.config.patch, classes=classes)
    return class_examples(args.input, args.tokens, args.shards, "train", model.config.patch, classes)


def memory_policy(args, model: TokenViT, task: Task) -> Policy:
    """The buffer policy of the `--memory-*` flags, its token count fixed for the task sequence's samples (read here
    only when the method fits it to them, then dropped)."""
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
    # coretokens: as many tokens as let every sample of the sequence fit the budget (policy.resolve_tokens)
    fitted = policy.budget is not None and policy.implementation.tokens_per_sample(policy.num_positions, policy.token_fraction) is None
    checked = policy.keeps_memory and task.index == 0  # fail now, not after the last task's training
    sequence = Units([], np.zeros(0, np.int64), np.zeros((0, *model.config.grid), np.int64))  # none needed
    if fitted or checked:
        sequence = sequence_units(args, model, task.every, every_sample=fitted)
    policy = resolved(policy, sequence.keys, sequence.labels, sequence.units)
    if checked:  # one sample per class (policy.first_of_each_class): the same ones from every sample or from the first
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
    return TokenAugmenter(config, codebook, synonyms, seed=task_seed(args.seed, args.task), adapter=adapter)


def replay_config(args, model: TokenViT, train: Units, policy: Policy, batch: int, steps_per_epoch: int) -> ReplayConfig:
    """The replay settings of the flags; a filled view's value comes from this task's own training units."""
    fill = fill_value(train.units, args.memory_fill, model.config.codebook_size) if args.memory_view == "fill" else None
    predict = None
    if args.memory_view == "fill" and fill_spec(args.memory_fill).needs_fill_model:
        from tokenforge.models.mtm import MTMFiller

        predict = MTMFiller(args.fill_model, device=compute_device())
        predict.check_codebook(model.codebook, f"--fill-model {args.fill_model}")
    return ReplayConfig(
        batch=batch, keep=policy.tokens, grid=tuple(model.config.grid), input_dropout=args.input_dropout,
        dropout_mode=args.input_dropout_mode, view=args.memory_view, fill=fill, schedule=args.memory_schedule,
        steps_per_epoch=steps_per_epoch, seed=task_seed(args.seed, args.task), predict=predict,
    )  # fmt: skip


class ClassificationJob(TaskJob):
    """One task of class-incremental classification on the TokenViT (module doc; engine/job.py the interface)."""

    def check(self, args) -> None:
        check_args(args)

    def prepare(self) -> None:
        args = self.args
        self.task = task = Task.read(args.split, args.task)
        self.model = initial_model(args, task.num_classes)
        # joint (the upper bound) trains on every task so far; the others on this task's classes only.
        seen = memory_method(args.memory_method, "classification").trains_on_seen
        self.train = training_units(args, self.model, self.tracker, task.seen if seen else task.classes)
        self.policy = memory_policy(args, self.model, task)
        if not len(self.train.keys):
            raise TokenforgeError(f"{args.tokens or args.shards}: no training samples for task {args.task}'s classes {task.classes}")
        keeps = args.task > 0 and self.policy.keeps_memory
        self.memory = read_memory(args.previous / MEMORY_FILE) if keeps else Memory.empty()
        self.frozen = frozen_backbone(self.model)
        self.backbone = self.model.config.backbone_sha256 if args.task > 0 else None  # prompted: task t-1's

    def make_loop(self) -> TrainLoop:
        """The training loop of this task: replay, family, augmentations, DeepSpeed engine and callbacks."""
        args, model, train, policy = self.args, self.model, self.train, self.policy
        rank, world = rank_and_world()
        ids, labels = train.units, torch.from_numpy(train.labels)  # ids narrow: the loop widens each batch
        local = rank_slice(len(ids), rank, world)
        generator = torch.Generator().manual_seed(task_seed(args.seed, args.task))
        replay_batch = max(1, int(round(args.memory_replay_ratio * args.batch_size)))
        augmenter = augmenter_for(args, getattr(model, "codebook", None))
        if augmenter is not None and args.memory_view == "fill":
            raise TokenforgeError("memory.view: fill does not combine with token augmentations yet (they work on embeddings)")
        steps = max(1, -(-len(local) // args.batch_size))
        replay = Replay(self.memory, replay_config(args, model, train, policy, replay_batch, steps), generator)
        family = self.family_class(num_classes=self.task.num_classes, seen=self.task.seen)
        model.vit.set_grad_checkpointing(bool(args.activation_checkpointing))
        model.set_fused_attention(args.fused_attention)  # training only, as checkpointing: plain_model's copy is timm's
        for option in model_options():  # training-only settings (token expansion): plain_model's copy has them off
            option.training(model, args)
        engine = build_engine(model, args, steps * args.epochs)
        found, ckpt = callbacks(args, self.tracker, rank, augmenter)
        loop = TrainLoop(engine, family, replay, ids, labels, local=local, epochs=args.epochs, batch_size=args.batch_size,
                         generator=generator, augmenter=augmenter, callbacks=found)
        loop.checkpointer = ckpt  # removed once the outputs are written
        return loop

    def trained(self, loop: TrainLoop) -> TokenViT:
        model = plain_model(loop.engine.module, loop.device, self.frozen)
        if self.backbone is not None and backbone_digest(model) != self.backbone:
            raise TokenforgeError(f"task {self.args.task}: the frozen backbone no longer matches task {self.args.task - 1}'s backbone_sha256")
        return model

    def build_memory(self, model: TokenViT) -> tuple[Memory, dict]:
        """The memory of all tasks so far: the previous one plus this task's samples (also for joint, which keeps none)."""
        current, task = self.train.where(self.task.classes) if self.policy.trains_on_seen else self.train, self.task
        units = wide(current.units) if self.policy.keeps_memory else current.units  # scorers index the codebook
        return build_memory(model, self.memory, current.keys, current.labels, units, task.index, task.seen,
                            self.policy, seed=task_seed(self.args.seed, self.args.task))  # fmt: skip

    def probe(self, model: TokenViT, memory: Memory, loop: TrainLoop) -> dict:
        """The shortcut probe: replayed views against the same samples whole (continual/shortcut.py)."""
        from tokenforge.continual.shortcut import shortcut_auc

        args, seen = self.args, Units([], np.zeros(0, np.int64), self.train.units[:0])
        if len(memory):  # the whole grids of the memory's samples (all of seen classes), read for the probe alone
            seen = split_units(args.input, args.tokens, args.shards, "train", model.config.patch, classes=self.task.seen, keys=memory.keys)
        return {"shortcut_auc": shortcut_auc(model, memory, loop.replay, seen.keys, wide(seen.units), seed=args.seed)}

    def save(self, model: TokenViT, folder) -> None:
        save_model(model, folder)

    def stats(self, state) -> dict:
        return {"classes": self.task.classes, "train_samples": len(self.train.keys), "final_train_accuracy": state.epoch_acc}

    def summary(self, state) -> str:
        return f", train accuracy {state.epoch_acc:.3f}"
