"""Training throughput benchmark: samples/s, model FLOPs, achieved FLOP/s, MFU and peak memory of training steps
through the real training path, for fp32 and bf16, ViT-S and ViT-B widths, 14x14 and 16x16 token grids, whole
grids and replayed subsets, and the speed options of a training job (tokenforge.engine.speed) as variants.

    .venv/bin/python benchmarks/throughput.py                 # this machine's preset: gpu where CUDA is, else cpu
    python benchmarks/throughput.py --preset gpu              # an H100/H200, unattended, about 6-8 min
    .venv/bin/python benchmarks/throughput.py --quick         # tiny sizes, every code path: a smoke test (the tests)
    python benchmarks/throughput.py --render benchmarks/results/throughput-gpu.json   # the Markdown again

A step is `TrainLoop.train_step` of engine/loop.py on synthetic code ids (a step's speed does not depend on what
they mean), with a TokenViT (codebook of 1024 codes x 32, 100 classes, MLP ratio 4), the classification family's
loss and the DeepSpeed engine of `build_engine` (config/deepspeed.json: gradient clipping 1.0, as jobs run it):
forward, backward, clipping, AdamW and schedule step, the loss read back. Its inputs:
- full: a batch of B whole grids;
- subset: the step of a task t > 0 with the default replay (input dropout 1.0): B current samples as random
  subsets of a quarter of the grid's tokens plus B replayed memory rows of as many tokens (2B sequences a step,
  and samples/s counts them all).
Measured per row: samples/s (median step time over the timed steps, after warm-up steps that also compile);
FLOPs per sample (torch.utils.flop_counter.FlopCounterMode over one forward + backward of the step's loss: matmuls
and attention; the CPU flash-attention kernels, which torch's table lacks, with torch's SDPA formulas); achieved
FLOP/s (FLOPs per step / median step time); MFU (achieved / the peak: the best rate of a large square matmul of
the same dtype in the same run, measured before and after the rows); memory over one more step after the timed
ones: on a GPU torch.cuda.max_memory_allocated (peak) and its growth over what was allocated before the step; on a
CPU the growth of the process's resident memory over the step (VmHWM, reset through /proc/self/clear_refs, minus
VmRSS before, free heap returned to the OS first): activations and temporaries, not the weights and optimizer
state held before it; ops per step over one more step (eager models): the ATen ops it dispatches that compute,
counted with a TorchDispatchMode (views and allocations left out), which on a GPU is about its kernel launches, the
bound of a small model's step; on a GPU also its kernel launches, counted by torch.profiler over another step.

Variants: a group of models, each built the same way (same seed) with other speed options, timed interleaved (one
step of each in turn, on a GPU a block of steps; several rounds after an untimed one), so a background load hits
them alike. "before" is the path before the speed options (for-loop AdamW on a CPU, foreach on a GPU, DeepSpeed
as it comes, glibc's malloc as it comes); "plain torch" the same step without DeepSpeed (torch AdamW, LambdaLR,
torch's clip_grad_norm_). CPU timings move with whatever else runs on the machine: the JSON keeps the load
averages, every step time and the CPU seconds of each step. Writes benchmarks/results/throughput-<preset>.json
and .md (--quick: throughput-<preset>-quick.*); --profile writes profile-<preset>.md, one step of the first
group's case by op category, before the speed options and with the defaults. A row that fails is kept with its
error; the run goes on.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import time
from argparse import Namespace
from dataclasses import asdict, dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = {"ViT-S": (384, 12, 6), "ViT-B": (768, 12, 12), "tiny": (32, 2, 2)}  # width, depth, heads
CODES, CODE_DIM, CLASSES = 1024, 32, 100


@dataclass
class Case:
    precision: str  # fp32 | bf16
    model: str  # a MODELS key
    side: int  # token grid side
    subset: bool  # replayed subsets (a quarter of the tokens) instead of whole grids
    batch: int
    warmup: int = 2  # untimed steps first (the first compiles)
    steps: int = 3  # timed steps; in a variant group the steps of one variant per round (timed as one block)
    rounds: int = 3  # variant groups: rounds over the variants (after one untimed round)

    @property
    def name(self) -> str:
        return f"{self.precision} {self.model} {self.side}x{self.side} {'subset 1/4' if self.subset else 'full'}"


@dataclass
class Variant:
    name: str
    compile: str = "off"
    adamw: str = "auto"
    lean_engine: bool = True
    cpu_heap_cache: bool = True
    plain: bool = False  # the same step without DeepSpeed


DEFAULTS = Variant("defaults")
# seconds a compiled variant needs at least (GPU, ViT-S): not started with less of the time budget left
COMPILE_RESERVE_S = {"off": 0, "default": 60, "reduce-overhead": 90, "max-autotune": 240}


def before(gpu: bool) -> Variant:
    return Variant("before (no speed options)", adamw="foreach" if gpu else "for-loop", lean_engine=False, cpu_heap_cache=False)


def _grid(precisions, models, sides, batch: dict, warmup: int, steps: dict) -> list[Case]:
    return [Case(p, m, s, sub, batch[m], warmup, steps[m]) for p in precisions for m in models for s in sides for sub in (False, True)]


def presets(quick: bool) -> dict:
    """Rows and variant groups of each preset; --quick shrinks every size (tiny model, grids 4 and 6, batch 4)."""
    cpu_rows = _grid(("fp32", "bf16"), ("ViT-S", "ViT-B"), (14, 16), {"ViT-S": 16, "ViT-B": 8}, 1, {"ViT-S": 3, "ViT-B": 2})
    gpu_rows = _grid(("fp32", "bf16"), ("ViT-S", "ViT-B"), (14, 16), {"ViT-S": 256, "ViT-B": 256}, 3, {"ViT-S": 10, "ViT-B": 6})
    cpu_groups = [
        (Case("fp32", "ViT-S", 14, False, 16, 1, 1, 3), [DEFAULTS, before(False), Variant("no CPU heap cache", cpu_heap_cache=False),
                                                       Variant("no lean engine", lean_engine=False), Variant("AdamW fused", adamw="fused"),
                                                       Variant("plain torch (no DeepSpeed)", plain=True), Variant("compile default", compile="default")]),
        (Case("bf16", "ViT-S", 14, False, 16, 1, 1, 5), [DEFAULTS, before(False), Variant("compile default", compile="default"),
                                                       Variant("AdamW fused (a GPU's defaults)", adamw="fused"),
                                                       replace(before(True), name="before, AdamW foreach (a GPU's before)")]),
    ]
    gpu_groups = [
        (Case("bf16", "ViT-S", 14, False, 256, 3, 5), [DEFAULTS, before(True), Variant("no lean engine", lean_engine=False),
                                                        Variant("AdamW foreach", adamw="foreach"), Variant("compile default", compile="default"),
                                                        Variant("compile reduce-overhead", compile="reduce-overhead")]),
        (Case("fp32", "ViT-S", 14, False, 256, 3, 3), [DEFAULTS, before(True), Variant("plain torch (no DeepSpeed)", plain=True),
                                                        Variant("compile default", compile="default")]),
        (Case("bf16", "ViT-S", 14, True, 256, 3, 5), [DEFAULTS, Variant("compile default", compile="default")]),
        (Case("bf16", "ViT-S", 14, False, 256, 3, 5), [DEFAULTS, Variant("compile max-autotune", compile="max-autotune")]),
    ]
    # a CPU runs the ViT-B rows last: when a busy machine makes the run long, the time budget skips those
    out = {
        "cpu": dict(rows=[c for c in cpu_rows if c.model == "ViT-S"], groups=cpu_groups, rows_after=[c for c in cpu_rows if c.model == "ViT-B"],
                    peak_n=2048, budget_s=540),
        "gpu": dict(rows=gpu_rows, groups=gpu_groups, rows_after=[], peak_n=8192, budget_s=420),
    }
    if quick:
        for p in out.values():
            p.update(rows=[_tiny(c) for c in p["rows"] if c.model == "ViT-S"], rows_after=[], peak_n=256, budget_s=None,
                     groups=[(_tiny(c), vs) for c, vs in p["groups"]])
    return out


def _tiny(case: Case) -> Case:
    return replace(case, model="tiny", side={14: 4, 16: 6}[case.side], batch=4, warmup=2, steps=min(case.steps, 2), rounds=2)


# --- measuring -------------------------------------------------------------------------------------------------------


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, n: int, seconds: float = 1.0) -> float:
    """The best FLOP/s of an n x n x n matmul over three windows of about `seconds`."""
    import torch

    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(4):
                a @ b
            count += 4
            sync(device)
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def _flop_mapping() -> dict:
    """FLOP formulas for the CPU flash-attention kernels (torch's table has the GPU ones), torch's SDPA formulas."""
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    ops = torch.ops.aten
    if not hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}
    return {ops._scaled_dot_product_flash_attention_for_cpu: forward, ops._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def count_flops(loop, model, idx) -> int:
    """FLOPs of one forward + backward of the step's loss, through the bare model (eager; DeepSpeed's ZeRO 0 takes
    no backward but its own), gradients dropped after."""
    from torch.utils.flop_counter import FlopCounterMode

    compiled, model._compiled_call_impl = getattr(model, "_compiled_call_impl", None), None
    engine, loop.engine = loop.engine, model
    try:
        with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
            loop.step_loss(idx).backward()
    finally:
        model._compiled_call_impl, loop.engine = compiled, engine
        for p in model.parameters():
            p.grad = None
    return counter.get_total_flops()


# ops that launch no kernel (views, metadata, allocation; deterministic mode's fill of a new tensor is counted as fill_)
NO_KERNEL = frozenset({"view", "_unsafe_view", "t", "transpose", "permute", "expand", "as_strided", "detach", "alias", "empty",
                       "empty_strided", "slice", "select", "unsqueeze", "squeeze", "split", "split_with_sizes", "unbind",
                       "reshape", "_reshape_alias", "lift_fresh", "set_", "resize_", "unflatten", "chunk", "narrow", "diagonal",
                       "_record_function_enter_new", "_record_function_exit"})
LAUNCHES = frozenset({"cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch",
                      "cudaLaunchCooperativeKernel"})


def count_ops(fn) -> int:
    """ATen ops dispatched by `fn` that compute (a GPU launches a kernel for each; a foreach op launches one per
    chunk of tensors), counted below autograd with a TorchDispatchMode: forward, backward and the optimizer step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.overloadpacket.__name__ not in NO_KERNEL
            return func(*args, **(kwargs or {}))

    with Counter() as counter:
        fn()
    return counter.n


def count_launches(fn, device) -> int:
    """GPU kernel launches by `fn` (CUDA runtime and driver launch calls, CUDA graph launches), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    return sum(1 for e in prof.events() if e.name in LAUNCHES)


class Memory:
    """Peak memory of one step: GPU torch's allocator; CPU the resident set (module doc)."""

    def __init__(self, device):
        self.device = device
        self.libc = _libc()
        self.kind = "GPU: torch.cuda.max_memory_allocated" if device.type == "cuda" else (
            "CPU: growth of resident memory (VmHWM) over a step" if self._reset_hwm() else "CPU: growth of peak RSS (ru_maxrss)")

    def _reset_hwm(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def measure(self, fn) -> dict:
        import torch

        if self.device.type == "cuda":
            sync(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"peak_memory_mb": peak / 2**20, "step_memory_mb": (peak - before) / 2**20}
        if self.libc is not None:
            self.libc.malloc_trim(0)
        before = _status_kb("VmRSS")
        if self._reset_hwm():
            fn()
            peak = _status_kb("VmHWM")
        else:
            import resource

            fn()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_memory_mb": peak / 1024, "step_memory_mb": max(0, peak - before) / 1024}


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# --- building a step -------------------------------------------------------------------------------------------------


class PlainEngine:
    """What TrainLoop needs of a DeepSpeed engine, in plain torch: AdamW, LambdaLR, torch's clip_grad_norm_ (fp32)."""

    def __init__(self, model, args, device, clip: float):
        import torch

        from tokenforge.engine.deepspeed import warmup_cosine
        from tokenforge.engine.speed import adamw_options

        self.module, self.device, self.clip = model.to(device), device, clip
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, **adamw_options(args.adamw, device))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(100, 1000))  # build_engine's for 1000 steps

    def __call__(self, *inputs):
        return self.module(*inputs)

    def train(self):
        self.module.train()

    def backward(self, loss):
        loss.backward()

    def step(self):
        import torch

        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()


def build(case: Case, variant: Variant, device):
    """A TrainLoop over synthetic ids with this case's model and this variant's options; (loop, model, next_idx)."""
    import numpy as np
    import torch

    from tokenforge import families
    from tokenforge.continual.memory import Memory as ReplayMemory
    from tokenforge.continual.replay import Replay, ReplayConfig
    from tokenforge.engine.deepspeed import build_engine
    from tokenforge.engine.loop import TrainLoop
    from tokenforge.io import read_json
    from tokenforge.models.vit import ModelConfig, TokenViT
    from tokenforge.runtime import seed_everything

    seed_everything(0)
    width, depth, heads = MODELS[case.model]
    config = ModelConfig(grid=(case.side, case.side), codebook_size=CODES, code_dim=CODE_DIM, num_classes=CLASSES,
                         embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4.0)
    model = TokenViT(config, torch.randn(CODES, CODE_DIM))
    ds_config = ROOT / "config" / "deepspeed.json"
    args = Namespace(deepspeed_config=ds_config, batch_size=case.batch, gradient_accumulation=None, zero_stage=None,
                     precision=case.precision, lr=1e-3, weight_decay=0.05, warmup_epochs=1.0, epochs=10, compile=variant.compile,
                     adamw=variant.adamw, lean_engine=variant.lean_engine, cpu_heap_cache=variant.cpu_heap_cache)
    if variant.plain:
        engine = PlainEngine(model, args, device, read_json(ds_config).get("gradient_clipping", 0.0))
        from tokenforge.engine.speed import compile_model

        compile_model(model, variant.compile)
    else:
        engine = build_engine(model, args, 1000)
    n, samples = case.side**2, max(8, 4 * case.batch)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CODES, (samples, case.side, case.side), generator=generator)
    labels = torch.randint(0, CLASSES, (samples,), generator=generator)
    memory, keep = ReplayMemory.empty(), 0
    if case.subset:
        keep = max(1, n // 4)
        positions = np.sort(np.stack([np.random.default_rng(i).permutation(n)[:keep] for i in range(samples)]), axis=1)
        memory = ReplayMemory([f"m{i}" for i in range(samples)], labels.numpy(), np.zeros(samples, np.int64), positions,
                              np.take_along_axis(ids.flatten(1).numpy(), positions, axis=1))
    replay = Replay(memory, ReplayConfig(batch=case.batch, keep=keep, grid=(case.side, case.side), input_dropout=1.0), generator)
    family = families.get("classification", num_classes=CLASSES, seen=list(range(CLASSES)))
    loop = TrainLoop(engine, family, replay, ids, labels, local=torch.arange(samples), epochs=1, batch_size=case.batch,
                     generator=generator)
    engine.train()

    def next_idx():
        return torch.randperm(samples, generator=generator)[: case.batch]

    return loop, model, next_idx


_FLOPS: dict[tuple, int] = {}  # FLOPs per step by (model, side, subset, batch): the same for every precision and variant


class Runner:
    """One built variant: its steps, their wall and CPU times."""

    def __init__(self, case: Case, variant: Variant, device, memory: Memory):
        self.case, self.variant, self.device, self.memory = case, variant, device, memory
        self.loop, self.model, self.next_idx = build(case, variant, device)
        key = (case.model, case.side, case.subset, case.batch)
        if key not in _FLOPS:
            _FLOPS[key] = count_flops(self.loop, self.model, self.next_idx())
        self.flops = _FLOPS[key]
        self.samples = case.batch * (2 if case.subset else 1)
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.mem: dict = {}
        self.ops: int | None = None
        self.launches: int | None = None

    def heap(self) -> None:
        if self.device.type == "cpu":
            from tokenforge.engine.speed import cpu_heap_cache

            cpu_heap_cache(self.variant.cpu_heap_cache)

    def warm(self, steps: int | None = None) -> None:
        self.heap()
        for _ in range(self.case.warmup if steps is None else steps):
            self.loop.train_step(self.next_idx())
        sync(self.device)

    def measure_memory(self) -> None:
        """One more step, measured for memory (last: on a CPU it returns the free heap to the OS first)."""
        self.heap()
        self.mem = self.memory.measure(lambda: self.loop.train_step(self.next_idx()))

    def count(self) -> None:
        """Two more steps: one with its ops counted (eager models only: a compiled graph runs its own kernels), on a
        GPU one with its kernel launches counted. A count that fails is left out; the row stays."""
        step = lambda: self.loop.train_step(self.next_idx())  # noqa: E731
        try:
            if self.variant.compile == "off":
                self.ops = count_ops(step)
            if self.device.type == "cuda":
                self.launches = count_launches(step, self.device)
        except Exception as exc:  # noqa: BLE001 - a benchmark keeps its timings when a counter fails
            print(f"op count failed ({self.case.name}, {self.variant.name}): {type(exc).__name__}: {exc}", flush=True)

    def timed(self, steps: int) -> None:
        """`steps` steps, timed together (one block), appended per step."""
        self.heap()
        idx = [self.next_idx() for _ in range(steps)]
        sync(self.device)
        cpu, start = time.process_time(), time.perf_counter()
        for i in idx:
            self.loop.train_step(i)
        sync(self.device)
        self.times += [(time.perf_counter() - start) / steps] * steps
        self.cpu += [(time.process_time() - cpu) / steps] * steps

    def row(self, peak: float) -> dict:
        step = statistics.median(self.times)
        achieved = self.flops / step
        width, depth, heads = MODELS[self.case.model]
        return {"case": self.case.name, **asdict(self.case), "width": width, "depth": depth, "heads": heads,
                "variant": self.variant.name, "options": asdict(self.variant), "samples_per_step": self.samples,
                "tokens_per_sequence": (self.case.side**2 // 4 if self.case.subset else self.case.side**2) + 1,
                "samples_per_s": self.samples / step, "step_s": step, "step_times_s": self.times, "step_cpu_s": self.cpu,
                "flops_per_step": self.flops, "flops_per_sample": self.flops / self.samples, "achieved_flops": achieved,
                "mfu": achieved / peak if peak else None, "ops_per_step": self.ops, "launches_per_step": self.launches, **self.mem}


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the run ---------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, preset: dict, device):
        import torch

        self.preset, self.device = preset, device
        self.memory = Memory(device)
        self.start = time.perf_counter()
        self.dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        self.peaks = {p: [matmul_peak(device, d, preset["peak_n"])] for p, d in self.dtypes.items()}
        self.skipped: list[str] = []

    def peak(self, precision: str) -> float:
        return max(self.peaks[precision])

    def over_budget(self, what: str, reserve: float = 0.0) -> bool:
        budget = self.preset["budget_s"]
        if budget is not None and time.perf_counter() - self.start + reserve > budget:
            self.skipped.append(what)
            print(f"skipped (time budget {budget} s): {what}", flush=True)
            return True
        return False

    def row(self, case: Case) -> dict:
        """One case with the defaults: warm-up, then its timed steps one by one."""
        try:
            runner = Runner(case, DEFAULTS, self.device, self.memory)
            runner.warm()
            for _ in range(case.steps):
                runner.timed(1)
            runner.measure_memory()
            runner.count()
            row = runner.row(self.peak(case.precision))
        except Exception as exc:  # an unattended run keeps going; the row says what failed
            row = {"case": case.name, **asdict(case), "variant": DEFAULTS.name, "error": f"{type(exc).__name__}: {exc}"[:500]}
        runner = None
        release()
        print(json.dumps({k: v for k, v in row.items() if k not in ("step_times_s", "step_cpu_s", "options")}), flush=True)
        return row

    def group(self, case: Case, variants: list[Variant]) -> dict:
        """Variants of one case, built side by side, timed interleaved over the preset's rounds."""
        runners, rows = [], []
        for v in variants:
            if self.over_budget(f"{case.name}: {v.name}", reserve=COMPILE_RESERVE_S[v.compile]):
                continue
            try:
                runner = Runner(case, v, self.device, self.memory)
                runner.warm()
                runners.append(runner)
            except Exception as exc:  # an unattended run keeps going; the row says what failed
                rows.append(_failed(v, exc))
        for round_ in range(case.rounds + 1):  # an untimed round first: each variant's step after another's, as timed
            for runner in list(runners):
                try:
                    runner.warm(case.steps) if round_ == 0 else runner.timed(case.steps)
                except Exception as exc:
                    runners.remove(runner)
                    rows.append(_failed(runner.variant, exc))
        for runner in runners:
            runner.measure_memory()
            runner.count()
        rows = [r.row(self.peak(case.precision)) for r in runners] + rows
        runners = None
        release()
        for r in rows:
            print(json.dumps({k: v for k, v in r.items() if k in ("case", "variant", "samples_per_s", "mfu", "error")}), flush=True)
        return {"case": case.name, **asdict(case), "rows": rows}


def _failed(variant: Variant, exc: Exception) -> dict:
    return {"variant": variant.name, "options": asdict(variant), "error": f"{type(exc).__name__}: {exc}"[:500]}


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def run(preset_name: str, preset: dict, threads: int | None) -> dict:
    import deepspeed
    import torch

    from tokenforge.runtime import compute_device

    if threads:
        torch.set_num_threads(threads)
    os.environ["TQDM_DISABLE"] = "1"
    device = compute_device()
    load = os.getloadavg()
    bench = Bench(preset, device)
    rows = [bench.row(c) for c in preset["rows"] if not bench.over_budget(c.name)]
    groups = [bench.group(c, vs) for c, vs in preset["groups"]]
    rows += [bench.row(c) for c in preset["rows_after"] if not bench.over_budget(c.name)]
    for p, d in bench.dtypes.items():
        bench.peaks[p].append(matmul_peak(device, d, preset["peak_n"]))
    return {"preset": preset_name, "device": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "deepspeed": deepspeed.__version__, "python": platform.python_version(), "memory_kind": bench.memory.kind,
            "peak_flops": {p: {"before": v[0], "after": v[-1], "used": max(v)} for p, v in bench.peaks.items()},
            "peak_matmul_n": preset["peak_n"], "loadavg_start": load, "loadavg_end": os.getloadavg(),
            "wall_s": time.perf_counter() - bench.start, "rows": rows, "groups": groups, "skipped": bench.skipped}


# --- Markdown ----------------------------------------------------------------------------------------------------------


def _flops(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e12:.3g} T" if x >= 1e12 else f"{x / 1e9:.3g} G"


def _mb(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def _mem(r: dict, cuda: bool) -> str:
    if "step_memory_mb" not in r:
        return "-"
    return f"{_mb(r['peak_memory_mb'])} ({_mb(r['step_memory_mb'])})" if cuda else _mb(r["step_memory_mb"])


def markdown(result: dict) -> str:
    cuda = result["memory_kind"].startswith("GPU")
    peaks = ", ".join(f"{p} {_flops(v['used'])}FLOP/s" for p, v in result["peak_flops"].items())
    load = f"; load average {result['loadavg_start'][0]:.1f} at the start, {result['loadavg_end'][0]:.1f} at the end" if not cuda else ""
    mem = "peak GPU memory allocated by torch, MB (its growth over the step)" if cuda else \
        "growth of the process's resident memory over one step, MB (activations and temporaries)"
    lines = [f"Training throughput on {result['device']}, torch {result['torch']}, DeepSpeed {result['deepspeed']} "
             f"({result['wall_s'] / 60:.1f} min{load}). MFU against the measured peak of a {result['peak_matmul_n']}^3 matmul "
             f"of the same dtype: {peaks}. Memory: {mem}. Subset: a task t > 0 step, B current + B replayed sequences of "
             "a quarter of the tokens. ops/step: the ATen ops a step dispatches that compute (eager models; a GPU launches "
             "a kernel for each, a foreach op one per chunk of tensors)" + (", and the GPU kernel launches counted by "
             "torch.profiler" if cuda else "") + ".", "",
             "| precision | model | grid | input | batch | samples/s | FLOP/sample | achieved FLOP/s | MFU | memory | ops/step |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(_row(r, cuda))
    for g in result["groups"]:
        lines += ["", f"Variants, {g['case']}, batch {g['batch']} (interleaved):", "",
                  "| variant | samples/s | vs defaults | achieved FLOP/s | MFU | memory | ops/step |", "|---|---:|---:|---:|---:|---:|---:|"]
        base = next((r["samples_per_s"] for r in g["rows"] if r.get("variant") == DEFAULTS.name and "samples_per_s" in r), None)
        if not g["rows"]:
            lines.append("| (every variant skipped: time budget) | | | | | | |")
        for r in g["rows"]:
            if "error" in r:
                lines.append(f"| {r['variant']} | failed: {r['error'][:80]} | | | | | |")
                continue
            vs = f"{r['samples_per_s'] / base:.2f}x" if base else "-"
            mfu = f"{100 * r['mfu']:.0f}%" if r.get("mfu") else "-"
            lines.append(f"| {r['variant']} | {r['samples_per_s']:.3g} | {vs} | {_flops(r['achieved_flops'])} | {mfu} | {_mem(r, cuda)} | {_ops(r)} |")
    if result["skipped"]:
        lines += ["", "Skipped (time budget): " + "; ".join(result["skipped"])]
    return "\n".join(lines) + "\n"


def _ops(r: dict) -> str:
    """Ops dispatched per step, and on a GPU the kernel launches: "416 (530 launches)"; "-" where not counted."""
    ops, launches = r.get("ops_per_step"), r.get("launches_per_step")
    text = "-" if ops is None else f"{ops:,}"
    return text if launches is None else f"{text} ({launches:,} launches)"


def _row(r: dict, cuda: bool) -> str:
    grid, inp = f"{r['side']}x{r['side']}", "subset 1/4" if r["subset"] else "full"
    if "error" in r:
        return f"| {r['precision']} | {r['model']} | {grid} | {inp} | {r['batch']} | failed: {r['error'][:80]} | | | | | |"
    mfu = f"{100 * r['mfu']:.0f}%" if r.get("mfu") else "-"
    return (f"| {r['precision']} | {r['model']} | {grid} | {inp} | {r['batch']} | {r['samples_per_s']:.3g} | "
            f"{_flops(r['flops_per_sample'])} | {_flops(r['achieved_flops'])} | {mfu} | {_mem(r, cuda)} | {_ops(r)} |")


# --- profile ----------------------------------------------------------------------------------------------------------

CATEGORIES = (  # (category, substrings of an op's name), first match wins; ops under an optimizer step are "optimizer"
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "mkldnn_matmul", "aten::_addmm")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")),
    ("layernorm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("copies, fills, allocation", ("aten::copy_", "aten::fill_", "aten::zero_", "aten::cat", "aten::clone", "aten::empty",
                                   "aten::_to_copy", "aten::resize_", "aten::index", "aten::gather", "aten::scatter")),
    ("reductions", ("aten::sum", "aten::mean", "aten::norm", "linalg_vector_norm", "aten::amax", "aten::amin", "aten::max")),
    ("elementwise", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::neg", "aten::where", "aten::masked_fill",
                     "log_softmax", "nll_loss", "aten::softmax", "aten::pow", "aten::sqrt", "aten::isfinite", "aten::abs")),
)


def _category(event) -> str:
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer.step") or parent.name == "aten::_fused_adamw_":
            return "optimizer (AdamW)"
        parent = parent.cpu_parent
    for name, keys in CATEGORIES:
        if any(k in event.name for k in keys):
            return name
    return "other (Python, autograd, DeepSpeed bookkeeping)"


def profile_step(runner: Runner) -> dict[str, float]:
    """Seconds per category (self time: CPU time on a CPU, kernel time on a GPU) and the step's wall time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == "cuda" else [])
    runner.heap()
    idx = runner.next_idx()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        runner.loop.train_step(idx)
        sync(runner.device)
        wall = time.perf_counter() - start
    out: dict[str, float] = {}
    for event in prof.events():
        self_time = event.self_device_time_total if runner.device.type == "cuda" else event.self_cpu_time_total
        if self_time:
            key = _category(event)
            out[key] = out.get(key, 0.0) + self_time / 1e6
    return {"wall_s": wall, **dict(sorted(out.items(), key=lambda kv: -kv[1]))}


def profile(preset: dict, threads: int | None) -> str:
    """One step of the first variant group's case, before the speed options and with the defaults, by category."""
    import torch

    from tokenforge.runtime import compute_device

    if threads:
        torch.set_num_threads(threads)
    device = compute_device()
    case = preset["groups"][0][0]
    runners = [Runner(case, v, device, Memory(device)) for v in (before(device.type == "cuda"), DEFAULTS)]
    for r in runners:
        r.warm()
    tables = {}
    for r in runners + runners:  # interleaved, the second profile of each kept
        tables[r.variant.name] = profile_step(r)
    flops = runners[1].flops
    load = "" if device.type == "cuda" else f", load average {os.getloadavg()[0]:.1f}"
    lines = [f"One training step of {case.name}, batch {case.batch}, on {device_name(device)}{load} ({flops / 1e9:.0f} GFLOP), "
             f"profiled with torch.profiler (each variant's second profiled step, interleaved); seconds of self time by "
             f"category ({'kernel' if device.type == 'cuda' else 'CPU'} time). \"before\": the path before the speed options "
             "(on a CPU glibc's malloc in its steady state: blocks over 32 MB mapped per allocation, the heap trimmed past 64 MB).", ""]
    names = list(tables)
    keys = list(dict.fromkeys(k for t in tables.values() for k in t if k != "wall_s"))
    lines += ["| category | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{tables[n].get(k, 0.0):.3f}" for n in names) + " |")
    lines.append("| **sum of self times** | " + " | ".join(f"{sum(v for k, v in tables[n].items() if k != 'wall_s'):.3f}" for n in names) + " |")
    lines.append("| wall time of the step | " + " | ".join(f"{tables[n]['wall_s']:.3f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("cpu", "gpu"), default=None, help="default: gpu where CUDA is, else cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of every code path)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--budget-s", type=float, default=None, help="skip rows and variants started after this (default: the preset's)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--render", type=Path, default=None, help="print the Markdown of a results JSON and exit")
    parser.add_argument("--profile", action="store_true", help="profile one step of the first variant group's case, before the "
                        "speed options and with the defaults, by op category; write profile-<preset>.md")
    args = parser.parse_args()
    if args.render:
        print(markdown(json.loads(args.render.read_text())), end="")
        return
    import torch

    name = args.preset or ("gpu" if torch.cuda.is_available() else "cpu")
    preset = presets(args.quick)[name]
    if args.profile:
        table = profile(preset, args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"profile-{name}{'-quick' if args.quick else ''}.md").write_text(table)
        print(table)
        return
    if args.budget_s is not None:
        preset["budget_s"] = args.budget_s
    result = run(name, preset, args.threads)
    result["quick"] = args.quick
    stem = f"throughput-{name}{'-quick' if args.quick else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / f"{stem}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
