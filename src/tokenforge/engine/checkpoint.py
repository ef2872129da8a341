"""Training checkpoints for exact resume, kept outside Snakemake's declared outputs.

Every N steps the trainer saves, through DeepSpeed's `save_checkpoint`, the model, optimizer and
scheduler, plus a client state: the random generators, the epoch, the next batch, that epoch's
sample order and running sums. A killed job restarted with the same arguments (Snakemake's
`--rerun-incomplete` reruns it) loads the newest checkpoint and continues from there, so the result
equals that of an uninterrupted run. A final checkpoint after the last step means a job killed while
building its memory does not train again. Checkpoints are written under a new tag and `latest` moves
to it atomically only after the tag is complete, so a kill during a save leaves
the previous checkpoint usable. A checkpoint made with other arguments is ignored, with a warning.
The folder is removed once the job's outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

# Arguments that do not change what is computed: they may differ between the killed run and its resume (the speed
# options lean_engine and cpu_heap_cache give the same bits; compile and adamw do not).
_IGNORED = {"out", "checkpoint_dir", "checkpoint_every", "threads", "track", "tag", "quiet", "func", "command", "log_every",
            "lean_engine", "cpu_heap_cache"}


def fingerprint(args) -> str:
    values = {k: str(v) for k, v in sorted(vars(args).items()) if k not in _IGNORED}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class Checkpointer:
    def __init__(self, directory: Path, every: int, fingerprint: str, rank: int = 0):
        self.rank = rank  # every rank saves its part; rank 0 alone moves `latest` and prunes
        self.directory = Path(directory)
        self.every = every
        self.fingerprint = fingerprint
        self.last = 0  # the step of the newest checkpoint (saved or loaded)

    def due(self, step: int) -> bool:
        """Whether a multiple of `every` was reached since the last checkpoint (asked only where saving is possible,
        e.g. at the end of a gradient-accumulation cycle, so it may be asked past the multiple itself)."""
        return self.every > 0 and step // self.every > self.last // self.every

    def load(self, engine) -> dict | None:
        """The client state of the newest checkpoint, with the engine restored to it; None when there is none."""
        if not (self.directory / "latest").is_file():
            return None
        try:
            _, state = engine.load_checkpoint(str(self.directory))
        except Exception as exc:  # a damaged checkpoint costs the time since the start, never the job
            log.warning("checkpoint %s unreadable (%s); starting from step 0", self.directory, str(exc).splitlines()[0])
            return None
        if not state or state.get("fingerprint") != self.fingerprint:
            log.warning("checkpoint %s was made with other arguments; starting from step 0", self.directory)
            self.clear()
            return None
        self.last = state.get("step", 0)
        return state

    def save(self, engine, state: dict, step: int) -> None:
        tag = f"step{step:09d}"
        self.last = step
        engine.save_checkpoint(
            str(self.directory), tag=tag, client_state={**state, "fingerprint": self.fingerprint}, save_latest=False
        )
        if self.rank != 0:
            return
        # `latest` names the new tag only once it is complete, and atomically (DeepSpeed rewrites it in place).
        pending = self.directory / "latest.tmp"
        pending.write_text(tag)
        os.replace(pending, self.directory / "latest")
        for old in self.directory.iterdir():  # keep only the checkpoint `latest` names
            if old.is_dir() and old.name.startswith("step") and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        if self.rank == 0:
            shutil.rmtree(self.directory, ignore_errors=True)
