"""What happens around the training loop (engine/loop.py) without changing what it computes: a progress bar,
MLflow metrics, and resumable checkpoints. Each is a `Callback`; the loop calls them in the order given.
"""

from __future__ import annotations

import dataclasses
import resource
import time

import torch

from tokenforge.engine.checkpoint import Checkpointer
from tokenforge.engine.loop import Callback, LoopState
from tokenforge.runtime import progress


def max_rss_mb() -> float:
    """This process's peak resident memory in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class ProgressBar(Callback):
    """One bar per task, counting epochs, with the last epoch's loss and accuracy."""

    def __init__(self, task: int):
        self.task = task

    def on_train_start(self, loop) -> None:
        self.bar = progress(desc=f"task {self.task}", unit="epoch", initial=loop.state.epoch, total=loop.epochs)

    def on_epoch_end(self, loop) -> None:
        self.bar.set_postfix(loss=f"{loop.state.epoch_loss:.3f}", acc=f"{loop.state.epoch_acc:.3f}", refresh=False)
        self.bar.update(1)

    def on_train_end(self, loop) -> None:
        self.bar.close()


class Tracking(Callback):
    """MLflow metrics: every `log_every` steps the step's loss, learning rate, rate and peak memory; every epoch its
    loss, train accuracy, learning rate and rate. `tracker` may be the do-nothing tracker."""

    def __init__(self, tracker, log_every: int):
        self.tracker, self.log_every = tracker, log_every

    def on_step_end(self, loop) -> None:
        s = loop.state
        if s.step % self.log_every == 0:  # the curve within an epoch, and the process's peak memory
            rate = s.seen_samples / (time.perf_counter() - loop.t_start)
            metrics = {"step_loss": s.loss, "step_lr": loop.engine.get_lr()[0], "step_samples_per_s": rate, "max_rss_mb": max_rss_mb()}
            self.tracker.log_metrics(metrics, step=s.step)

    def on_epoch_end(self, loop) -> None:
        s = loop.state
        metrics = {"loss": s.epoch_loss, "train_accuracy": s.epoch_acc, "lr": loop.engine.get_lr()[0], "samples_per_s": s.rate}
        self.tracker.log_metrics(metrics, step=s.epoch)


class Checkpointing(Callback):
    """Resume from the newest checkpoint at the start; save one every `every` steps where an optimizer step just
    ended (gradients accumulated so far are not in a checkpoint), and one after training, so a job killed while
    building its memory does not train again. The generators' states go with the loop state."""

    def __init__(self, checkpointer: Checkpointer, task: int, augmenter=None):
        self.ckpt, self.task, self.augmenter = checkpointer, task, augmenter
        self.finished_before = False

    def _client_state(self, loop) -> dict:
        state = dataclasses.asdict(loop.state)
        state.update(gen=loop.generator.get_state(), torch_rng=torch.get_rng_state())
        state["augment_rng"] = self.augmenter.generator.get_state() if self.augmenter is not None else None
        return state

    def on_train_start(self, loop) -> None:
        resumed = self.ckpt.load(loop.engine)
        if resumed is None:
            return
        loop.generator.set_state(resumed["gen"])
        torch.set_rng_state(resumed["torch_rng"])
        if self.augmenter is not None:
            self.augmenter.generator.set_state(resumed["augment_rng"])
        # .get: a checkpoint written before a field existed (e.g. by an older tokenforge) resumes with its default
        fresh = LoopState()
        loop.state = LoopState(**{f.name: resumed.get(f.name, getattr(fresh, f.name)) for f in dataclasses.fields(LoopState)})
        self.finished_before = loop.state.epoch >= loop.epochs
        s = loop.state
        print(f"task {self.task}: resuming from step {s.step} (epoch {s.epoch}, batch {s.batch}) "
              f"of the checkpoint in {self.ckpt.directory}", flush=True)

    def on_step_end(self, loop) -> None:
        step = loop.state.step
        if step % loop.engine.gradient_accumulation_steps() == 0 and self.ckpt.due(step):
            self.ckpt.save(loop.engine, self._client_state(loop), step)

    def on_train_end(self, loop) -> None:
        if not self.finished_before:  # killed after training: the final checkpoint is already there
            self.ckpt.save(loop.engine, self._client_state(loop), loop.state.step)
