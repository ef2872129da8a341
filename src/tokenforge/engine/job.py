"""What every family's training job shares, and the interface the shared trainer (engine/train.py) drives.

A family's `training_job(args, tracker)` returns a `TaskJob`. The trainer calls, in this order:

    job = family.training_job(args, tracker)   # checks the family's flags; reads nothing yet
    seed_everything(args.seed + args.task)     # the trainer's: everything after is reproducible
    job.prepare()                              # split, model (task 0's start or task t-1's), data, policy, old memory
    loop = job.make_loop()                     # replay, the family's loss, the DeepSpeed engine, `callbacks(...)`
    loop.run()
    model = job.trained(loop)                  # the trained weights as a plain eval-mode model
    memory, info = job.build_memory(model)     # this task's rows (relevance-scored), refitted with the old ones to
                                               # the budget by continual.policy.fit_budget
    job.probe(model, memory, loop)             # stats the job measures on them (classification: the shortcut AUC)
    job.save(model, folder), job.stats(state)  # rank 0, once the ranks agree: the model's files, the family's stats

`job.policy` (continual.policy.Policy) sizes the memory file: its method, budget, num_codes, num_positions and
num_classes. The pieces below are what the families' jobs have in common: the task manifest, the rank and world
size, and the callbacks around the loop (progress bar, MLflow, resumable checkpoints).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes ((0, 1) without a launcher)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass
class Task:
    """What the split (tasks.json) says about the task being trained; "classes" are class labels (classification)
    or group indices (vqa, captioning)."""

    index: int
    classes: list[int]  # this task's classes
    seen: list[int]  # the classes of tasks 0..index
    every: list[int]  # the classes of every task of the sequence
    num_classes: int  # size of the label space
    manifest: dict  # tasks.json as read

    @classmethod
    def read(cls, split_dir: Path, index: int, family: str = "classification") -> "Task":
        manifest = read_json(split_dir / "tasks.json")
        made_for = manifest.get("family", "classification")
        if made_for != family:
            raise TokenforgeError(f"{split_dir / 'tasks.json'}: a {made_for} split, not {family}")
        tasks = manifest["tasks"]
        if not 0 <= index < len(tasks):
            raise TokenforgeError(f"--task {index}: the split has tasks 0..{len(tasks) - 1}")
        seen = [c for t in tasks[: index + 1] for c in t["classes"]]
        every = [c for t in tasks for c in t["classes"]]
        return cls(index, tasks[index]["classes"], seen, every, manifest["num_classes"], manifest)


def callbacks(args, tracker, rank: int, augmenter=None) -> tuple[list, object]:
    """The callbacks around a task's loop and its checkpointer (None without --checkpoint-dir): checkpointing first,
    since a resume restores the state the others read, then the progress bar and MLflow metrics."""
    from tokenforge.engine.callbacks import Checkpointing, ProgressBar, Tracking
    from tokenforge.engine.checkpoint import Checkpointer, fingerprint

    found = [ProgressBar(args.task), Tracking(tracker, args.log_every)]
    ckpt = Checkpointer(args.checkpoint_dir, args.checkpoint_every, fingerprint(args), rank) if args.checkpoint_dir else None
    if ckpt is not None:
        found.insert(0, Checkpointing(ckpt, args.task, augmenter))
    return found, ckpt


def check_common(args) -> None:
    """The flags every family's loop reads."""
    if args.memory_replay_ratio <= 0:
        raise TokenforgeError(f"memory.replay_ratio: must be > 0, got {args.memory_replay_ratio}")
    if not 0 <= args.input_dropout <= 1:
        raise TokenforgeError(f"--input-dropout: must be in [0, 1], got {args.input_dropout}")
    if args.checkpoint_every < 1:
        raise TokenforgeError(f"--checkpoint-every: must be >= 1, got {args.checkpoint_every}")
    if args.log_every < 1:
        raise TokenforgeError(f"--log-every: must be >= 1, got {args.log_every}")


class TaskJob:
    """The interface of a family's training job (module doc); subclasses implement every method."""

    policy = None  # continual.policy.Policy, set by prepare()

    def __init__(self, family_class, args, tracker):
        self.check(args)  # one-line errors before any data is read
        self.family_class, self.args, self.tracker = family_class, args, tracker

    def check(self, args) -> None:
        """The family's checks of the flags (what it is not offered, settings that cannot work)."""

    def prepare(self) -> None:
        raise NotImplementedError

    def make_loop(self):
        raise NotImplementedError

    def trained(self, loop):
        raise NotImplementedError

    def build_memory(self, model) -> tuple:
        raise NotImplementedError

    def probe(self, model, memory, loop) -> dict:
        return {}

    def save(self, model, folder: Path) -> None:
        raise NotImplementedError

    def stats(self, state) -> dict:
        """The family's own stats.json fields, given the loop's final state (engine/loop.py LoopState)."""
        raise NotImplementedError

    def summary(self, state) -> str:
        """What the closing line says after the loss (classification: the train accuracy)."""
        return ""
