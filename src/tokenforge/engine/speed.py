"""How fast a training step runs, never what it computes unless said: the speed options of a training job
(`tokenforge train` flags, config train.*), applied by `build_engine`. benchmarks/throughput.py measures each.

- `train.compile` (off | default | reduce-overhead | max-autotune): torch.compile of the model in place
  (`nn.Module.compile`, so state-dict names and checkpoints stay the same), static shapes: one graph per input
  shape (a full grid, each subset length, a last short batch), each compiled when first seen (tens of seconds on
  a CPU). reduce-overhead adds CUDA graphs on a GPU (nothing more on a CPU); max-autotune also tries GEMM
  kernels. Compiled kernels round differently from eager ones: a compiled run is deterministic (same config and
  seed, same bits on the same machine) but not bitwise the eager run. Off by default.
- `train.adamw` (auto | for-loop | foreach | fused): torch's AdamW implementation. auto: fused on a GPU, the
  for-loop one on a CPU, today's bits there (foreach gives the same bits, slower on a CPU; fused CPU AdamW is
  deterministic and faster, but rounds differently).
- `train.lean_engine` (default on): skip DeepSpeed's per-step work that changes nothing in one process or in
  ZeRO 0: the gradient all-reduce of a single process (a flat copy of every gradient and back), the fp32
  gradient clipping's one-process all-reduce and per-parameter norms and products (foreach ops instead, the
  same bits on a CPU), bf16's per-parameter overflow check (a host sync per parameter on a GPU) that the
  gradient-norm check of the same step repeats, and bf16's master-weight step done with foreach ops instead of
  seven ops per parameter (cast, norm, square, sum, scale, copy back). The same bits on a CPU, fewer launches and
  syncs on a GPU: a bf16 ViT-S step with a GPU's AdamW dispatched 3,918 ops before the speed options and 414 with
  them, about 400 of those the forward and backward (counted on the CPU, benchmarks/results/throughput-cpu.md).
- `train.cpu_heap_cache` (default on): on a CPU, glibc keeps freed memory in the process heap (no mmap for
  large blocks, no trimming), so every step reuses the pages of the last one instead of faulting in fresh
  zeroed pages for each activation over glibc's mmap threshold (at most 32 MB): a width-384 ViT step at batch 64
  on 2 cores took 10.3 s instead of 11.9 s (measured in fresh processes; at batch 16, whose activations stay
  under the threshold, no measurable change). Process-wide, from the job's first step on; the memory a step
  needed stays with the process. The same bits.

DeepSpeed's per-step overhead on this path (ZeRO 0, one process, fp32, clipping on), measured on the CPU with a
width-384 ViT, one thread, CPU seconds: 25 ms a step over a plain torch step (0.391 s vs 0.366 s at batch 1; the
flat copy of every gradient and back for the one-process all-reduce, the per-parameter clipping); lean, 0.367 s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import types

import numpy as np
import torch

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def _mallopt():
    """glibc's mallopt, or None (another C library, or no ctypes access)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt
    except (OSError, AttributeError):
        return None


def cpu_heap_cache(on: bool = True) -> bool:
    """Keep freed memory in the heap (on) or return to glibc's steady state for training-sized blocks (off: blocks
    over 32 MB mmapped and unmapped when freed, the heap trimmed past 64 MB; what the dynamic default settles to).
    Whether glibc took it."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    if on:
        return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(k, v) for k, v in ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 64 << 20)))


def adamw_options(choice: str, device: torch.device) -> dict:
    """torch.optim.AdamW's implementation arguments for `train.adamw` on `device`."""
    if choice == "auto":
        choice = "fused" if device.type == "cuda" else "for-loop"
    return {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[choice]


def compile_model(model: torch.nn.Module, mode: str) -> None:
    """torch.compile `model` in place (`train.compile`), static shapes; "off" leaves it eager.

    A graph that fails to compile runs eagerly, with a one-line warning: its backward is compiled with its forward
    so that a backward failure falls back too (torch 2.14's CPU inductor fails on some bf16 gradient reductions,
    e.g. a subset step's class-token gradient: "conflicting declaration", pytorch/pytorch#194706's kind)."""
    if mode == "off":
        return
    import torch._dynamo
    import torch._functorch.config

    # one graph per input shape: full grids, subset lengths and short last batches, of the current and memory batches
    # (torch's config modules refuse unknown names: older torch, e.g. a GPU image's, names the limit cache_size_limit and
    # may lack the eager backward lowering)
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 32))
    torch._dynamo.config.suppress_errors = True
    if hasattr(torch._functorch.config, "force_non_lazy_backward_lowering"):
        torch._functorch.config.force_non_lazy_backward_lowering = True
    fallback = logging.getLogger("torch._dynamo.convert_frame")
    if not any(isinstance(f, _OneLineFallback) for f in fallback.filters):
        fallback.addFilter(_OneLineFallback())
    model.compile(mode=None if mode == "default" else mode, dynamic=False)


class _OneLineFallback(logging.Filter):
    """Dynamo's warning for a graph that failed to compile (and runs eagerly), without the compiler's pages of output."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            record.msg, record.args = "train.compile: a graph failed to compile and runs eagerly (%s: %s)", (type(exc).__name__, first[:200])
            record.exc_info = record.exc_text = None
        return True


def lean_engine(engine) -> list[str]:
    """Turn off DeepSpeed's per-step work that changes nothing here (module doc); the names of what was changed."""
    import torch.distributed as dist

    changed = []
    single = not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1
    if single and engine.zero_optimization_stage() == 0 and engine.enable_backward_allreduce:
        engine.enable_backward_allreduce = False  # the all-reduce of one process: flatten, reduce over gloo/NCCL, copy back
        changed.append("single-process gradient all-reduce")
    if single and not (engine.fp16_enabled() or engine.bfloat16_enabled() or engine.zero_optimization()):
        engine.clip_fp32_gradients = types.MethodType(_clip_fp32_gradients, engine)
        changed.append("fp32 gradient clipping: foreach ops, no all-reduce")
    checker = getattr(engine.optimizer, "overflow_checker", None)
    if checker is not None and type(engine.optimizer).__name__ == "FP16_UnfusedOptimizer" and engine.bfloat16_enabled():
        # bf16 has no loss scale; a non-finite gradient makes the gradient norm of the same step invalid, which skips
        # the step exactly as the overflow check would (FP16_UnfusedOptimizer.step)
        checker.check = lambda *args, **kwargs: False
        changed.append("bf16 per-parameter overflow check")
        if single and not engine.optimizer.fused_lamb_legacy and engine.optimizer.mpu is None and not checker.has_moe_params:
            engine.optimizer.step = types.MethodType(_bf16_step, engine.optimizer)
            changed.append("bf16 master-weight step: foreach ops")
    return changed


@torch.no_grad()
def _bf16_step(self, closure=None) -> bool:
    """DeepSpeed's FP16_UnfusedOptimizer.step for bf16 in one process, op for op (the same bits on a CPU), with a
    handful of foreach ops instead of seven per parameter: the fp32 gradients cast into one flat buffer, their
    2-norms, their squares summed in order in fp32 on the host (DeepSpeed's `total += norm ** 2` loop; one
    device-to-host copy, where DeepSpeed reads the sum back too), the clip scale, AdamW on the fp32 master weights,
    the bf16 weights copied back. `self` is the optimizer; its overflow check is off (lean_engine)."""
    from deepspeed.runtime.utils import get_global_norm

    self.overflow = False  # DeepSpeed's step starts from its overflow check (off: False), after a skipped step too
    norms = [_group_norm(_cast_grads(fp32, low)) if fp32 else 0.0 for fp32, low in zip(self.fp32_groups, self.fp16_groups)]
    self._global_grad_norm = get_global_norm(norms)
    if not math.isfinite(self._global_grad_norm):
        return self._skip_invalid_grad_norm()
    self._update_scale(False)
    scale = self.unscale_and_clip_grads(self._global_grad_norm, apply_scale=False)
    grads = [p.grad for group in self.fp32_groups for p in group]
    if scale != 1.0 and grads:  # x * 1.0 is x: DeepSpeed's multiply by one changes nothing
        torch._foreach_mul_(grads, 1.0 / scale)
    self.optimizer.step()
    for fp32_group, low_group in zip(self.fp32_groups, self.fp16_groups):
        if fp32_group:
            torch._foreach_copy_([p.data for p in low_group], [p.data for p in fp32_group])
        for p in fp32_group:
            p.grad = None
    return self.overflow


def _cast_grads(fp32_group: list, low_group: list) -> list:
    """Give each fp32 master weight a gradient, a view of one flat buffer: its bf16 weight's gradient cast, or zero
    where that has none (as DeepSpeed does). The ones cast, which the group's norm counts."""
    flat = torch.empty(sum(p.numel() for p in fp32_group), dtype=torch.float32, device=fp32_group[0].device)
    for p, view in zip(fp32_group, flat.split([p.numel() for p in fp32_group])):
        p.grad = view.view(p.shape)
    pairs = [(p.grad, low.grad) for p, low in zip(fp32_group, low_group) if low.grad is not None]
    for p, low in zip(fp32_group, low_group):
        if low.grad is None:
            p.grad.zero_()
    if pairs:
        torch._foreach_copy_([g for g, _ in pairs], [g for _, g in pairs])
    return [g for g, _ in pairs]


def _group_norm(grads: list) -> float:
    """DeepSpeed's get_weight_norm of fp32 gradients: -1 for a non-finite norm, 0.0 for none."""
    if not grads:
        return 0.0
    norms = torch.stack(torch._foreach_norm(grads, 2.0)).cpu().numpy()
    total = float(np.add.accumulate(norms * norms, dtype=np.float32)[-1]) ** 0.5  # in order, as DeepSpeed's loop adds
    return total if math.isfinite(total) else -1


@torch.no_grad()
def _clip_fp32_gradients(engine) -> torch.Tensor:
    """DeepSpeed's `clip_grad_norm_` for one process, op for op (the same bits): per-gradient 2-norms, the root of
    their summed squares, coefficient min(1, max_norm / (norm + 1e-6)), every gradient times it; foreach ops and
    no all-reduce (one process: x * 1.0 / 1 = x)."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.stack(torch._foreach_norm(grads, 2.0)).pow(2.0).sum().float().pow(0.5)
    coef = torch.tensor([float(engine.gradient_clipping())], device=total.device) / (total + 1e-6)
    coef = torch.min(torch.tensor([1.0], device=total.device), coef)
    torch._foreach_mul_(grads, coef[0])
    return total
