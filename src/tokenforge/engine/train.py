"""One task's training job, for every family: the family's job (engine/job.py) supplies the data, the model, the
targets and loss of its loop, the memory rows and their relevance; this module runs it through the training loop
(engine/loop.py) on a DeepSpeed engine, has it build the memory of all tasks so far (refitted to the byte budget by
continual.policy.fit_budget), checks that every rank built the same memory, and writes model, memory and stats as
the job's outputs.

`train_task(args, tracker)` takes the flags of `tokenforge train` (cli/train.py documents each one); `--family`
names the family (families.FAMILIES). Task 0 starts from a seeded initialisation (or `--init`, the pretrain stage's
model); task t > 0 from task t-1's model and memory. On a CPU it runs as one process with gloo; under torchrun or
the deepspeed launcher one process per GPU (or `train.processes` CPU processes), each on its slice of the data;
the ranks check they built the same memory and rank 0 writes the outputs.
"""

from __future__ import annotations

import hashlib
import os
import time

import torch

from tokenforge import families
from tokenforge.continual.memory import MEMORY_FILE, serialize
from tokenforge.engine.callbacks import max_rss_mb
from tokenforge.engine.job import rank_and_world
from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, write_json
from tokenforge.runtime import job_resources, seed_everything

__all__ = ["Outputs", "agreed", "leave_process_group", "timed_memory", "train_task"]


def train_task(args, tracker) -> None:
    """Train task `args.task`, build the memory of all tasks so far, write model, memory and stats to `args.out`."""
    start = time.perf_counter()
    job = families.FAMILIES.load(args.family).training_job(args, tracker)
    seed_everything(args.seed + args.task)
    job.prepare()
    loop = job.make_loop()
    state = loop.run()
    model = job.trained(loop)
    memory, info, memory_s = timed_memory(job, model, args.task)
    probed = job.probe(model, memory, loop)
    outputs = Outputs(args, job, loop, state, start)
    try:
        outputs.write(model, memory, info, probed, memory_s, tracker)
    finally:
        leave_process_group()


def timed_memory(job, model, task: int):
    """The job's memory of all tasks so far, its info and the seconds it took to build."""
    print(f"task {task}: building the memory", flush=True)
    if os.environ.get("TOKENFORGE_TEST_PAUSE_BEFORE_MEMORY"):  # tests: a window to kill the job in this phase
        time.sleep(float(os.environ["TOKENFORGE_TEST_PAUSE_BEFORE_MEMORY"]))
    t_memory = time.perf_counter()
    memory, info = job.build_memory(model)
    return memory, info, time.perf_counter() - t_memory


def leave_process_group() -> None:
    """Under several processes: wait until rank 0 has written the outputs, then take the process group down.

    A rank that simply exited while the others were still in the group sometimes aborted in the C++ teardown
    ("terminate called without an active exception", SIGABRT seen once in 2 runs of the two-process test), and
    torchrun then failed the job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()


def agreed(digest: str, task: int) -> bool:
    """Whether this rank writes the outputs: every rank built the memory from the same model and data, so their
    memories' digests must agree (else a one-line error on every rank); rank 0 writes."""
    rank, world = rank_and_world()
    if world == 1:
        return True
    import torch.distributed as dist

    digests = [None] * world
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise TokenforgeError(f"task {task}: the ranks built different memories ({', '.join(d[:12] for d in digests)})")
    return rank == 0


class Outputs:
    """The job's outputs: model, memory file and stats, written by rank 0 once every rank built the same memory."""

    LOGGED = ("final_loss", "memory_bytes", "memory_samples", "memory_build_s", "shortcut_auc", "named_object_share",
              "named_object_area")

    def __init__(self, args, job, loop, state, start: float):
        self.args, self.job, self.loop, self.state, self.start = args, job, loop, state, start

    def write(self, model, memory, info: dict, probed: dict, memory_s: float, tracker) -> None:
        args, policy = self.args, self.job.policy
        blob = serialize(memory, policy.num_codes, policy.num_positions, policy.num_classes)  # zstd-19: once, for digest and file
        digest = hashlib.sha256(blob).hexdigest()
        if not agreed(digest, args.task):
            return
        with atomic_dir(args.out) as tmp:
            self.job.save(model, tmp)
            (tmp / MEMORY_FILE).write_bytes(blob)
            stats = self.stats(memory, info, memory_s, len(blob), digest) | probed
            write_json(tmp / "stats.json", stats)
        if self.loop.checkpointer is not None:
            self.loop.checkpointer.clear()
        tracker.log_metrics({k: v for k, v in stats.items() if k in self.LOGGED and v is not None})
        for name in ("stats.json", "model.json"):
            tracker.log_artifact(args.out / name)
        print(f"task {args.task}: loss {self.state.epoch_loss:.3f}{self.job.summary(self.state)}, memory {len(memory)} samples x "
              f"{stats['memory_tokens_per_sample']} tokens = {len(blob)} bytes")  # fmt: skip

    def stats(self, memory, info: dict, memory_s: float, memory_bytes: int, digest: str) -> dict:
        args, policy, engine, s, device = self.args, self.job.policy, self.loop.engine, self.state, self.loop.device
        return {
            "task": args.task, "steps": s.step, "final_loss": s.epoch_loss, "samples_per_s": s.rate,
            "memory_bytes": memory_bytes, "memory_samples": len(memory), "memory_tokens_per_sample": memory.tokens_per_sample,
            "memory_method": policy.method, "memory_scorer": policy.scorer, "memory_budget_bytes": policy.budget,
            "memory_samples_per_class": info.get("samples_per_class", {}), "memory_build_s": memory_s,
            # the memory builder's other numbers, when it has any (text families on scenes: named_object_*)
            **{key: value for key, value in info.items() if key != "samples_per_class"},
            "world_size": rank_and_world()[1], "device": str(device),
            "deepspeed": {"zero_stage": engine.zero_optimization_stage(), "bf16": engine.bfloat16_enabled(),
                          "gradient_accumulation": engine.gradient_accumulation_steps(),
                          "activation_checkpointing": bool(args.activation_checkpointing)},
            "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "peak_rss_mb": max_rss_mb(), "memory_sha256": digest, "wall_s": time.perf_counter() - self.start,
            **self.job.stats(s),
            "resources": job_resources(),  # this process's own peak RSS and CPU seconds, at the end of the job
        }  # fmt: skip
