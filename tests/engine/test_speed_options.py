"""The speed options of a training job (tokenforge.engine.speed): each trains a task chain on the CPU; the same config
and seed give the same outputs with them on; the options that promise the same bits give them; the throughput
benchmark's quick run writes its fields."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.pipeline import REPO
from helpers.training import token_task_data, two_task_chain

from tokenforge.cli import main

pytestmark = pytest.mark.slow
RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
OUTPUTS = ("model.safetensors", "memory.arrows.zst")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tokenizer, a token set with 4 classes, a 2-task split; a DeepSpeed config that clips every step."""
    root = token_task_data(tmp_path_factory.mktemp("speed"), per_class=80)
    (root / "deepspeed.json").write_text(json.dumps({"gradient_clipping": 0.01}))  # small: the clip path always scales
    return root


def _flags(data, out, task) -> list[str]:
    return ["train", "--tokens", str(data / "train.parquet"), "--tokenizer", str(data / "tokenizer"), "--split", str(data / "split"),
            "--task", str(task), "--out", str(out), "--epochs", "2", "--embed-dim", "16", "--depth", "1", "--batch-size", "16",
            "--memory-budget", "none", "--memory-samples-per-class", "3", "--deepspeed-config", str(data / "deepspeed.json"), "-q"]


def train(data, out, task, *extra):
    return main(_flags(data, out, task) + list(extra))


def _train_process(data, out, task, *extra) -> None:
    """`tokenforge train` as its own process with 2 threads (a fresh malloc, as the pipeline runs it)."""
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    cmd = [str(Path(sys.executable).parent / "tokenforge"), *_flags(data, out, task), "--threads", "2", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _chain_process(data, root, *extra) -> dict[str, bytes]:
    _train_process(data, root / "task-0", 0, *extra)
    _train_process(data, root / "task-1", 1, "--previous", str(root / "task-0"), *extra)
    return {f"{t}/{n}": (root / t / n).read_bytes() for t in ("task-0", "task-1") for n in OUTPUTS}


@pytest.mark.parametrize(
    "flags",
    [["--compile", "default"], ["--compile", "default", "--precision", "bf16"], ["--adamw", "fused"], ["--adamw", "foreach"],
     ["--no-lean-engine"], ["--no-lean-engine", "--precision", "bf16"], ["--no-cpu-heap-cache"]],
    ids=["compile", "compile-bf16", "adamw-fused", "adamw-foreach", "no-lean-engine", "no-lean-engine-bf16", "no-heap-cache"],
)
def test_each_speed_option_trains_a_task_chain(data, tmp_path, flags):
    """Task 1 replays subsets and feeds its current batches as subsets (input dropout 1.0): a compiled model meets
    full grids, subsets and memory rows."""
    two_task_chain(train, data, tmp_path, *flags)
    stats = json.loads((tmp_path / "task-1" / "stats.json").read_text())
    assert stats["steps"] == 20 and stats["memory_samples"] == 12 and np.isfinite(stats["final_loss"])


def test_same_config_and_seed_same_outputs_with_compile_and_fused_adamw(data, tmp_path):
    flags = ["--compile", "default", "--adamw", "fused"]
    for name in ("a", "b"):
        two_task_chain(train, data, tmp_path / name, *flags)
    for task in ("task-0", "task-1"):
        for name in OUTPUTS:
            assert (tmp_path / "a" / task / name).read_bytes() == (tmp_path / "b" / task / name).read_bytes(), (task, name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lean_engine_heap_cache_and_foreach_adamw_give_the_bits_of_the_plain_path(data, tmp_path, precision):
    """The path before the speed options (DeepSpeed as it comes, glibc as it comes, for-loop AdamW) and the defaults
    with foreach AdamW, each in fresh processes: the same model and memory after both tasks, clipping on."""
    plain = _chain_process(data, tmp_path / "plain", "--precision", precision, "--no-lean-engine", "--no-cpu-heap-cache",
                           "--adamw", "for-loop")
    lean = _chain_process(data, tmp_path / "lean", "--precision", precision, "--adamw", "foreach")
    assert plain.keys() == lean.keys() and all(plain[k] == lean[k] for k in plain), [k for k in plain if plain[k] != lean[k]]


def test_lean_clipping_is_deepspeeds_op_for_op(data):
    """The foreach clipping of one process equals DeepSpeed's clip_grad_norm_ bit for bit, clipping active."""
    import deepspeed
    from deepspeed.runtime.utils import clip_grad_norm_

    from tokenforge.engine.deepspeed import ensure_distributed_env
    from tokenforge.engine.speed import _clip_fp32_gradients

    ensure_distributed_env()
    deepspeed.init_distributed(dist_backend="gloo")
    g = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (48,), (16, 16), (16,), (64, 16), (10, 64)]
    grads = [torch.randn(s, generator=g) * 3 for s in shapes]
    ours, theirs = [torch.nn.Parameter(torch.zeros(s)) for s in shapes], [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p, q, grad in zip(ours, theirs, grads):
        p.grad, q.grad = grad.clone(), grad.clone()

    class Engine:
        module = torch.nn.ParameterList(ours)

        def gradient_clipping(self):
            return 0.5

    total = _clip_fp32_gradients(Engine())
    reference = clip_grad_norm_(theirs, max_norm=0.5)
    assert torch.equal(total.reshape(()), reference.reshape(()))
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(ours, theirs))
    assert not torch.equal(ours[0].grad, grads[0])  # clipping was active


def _bf16_optimizers(grads: list):
    """Two DeepSpeed bf16 master-weight optimizers (clipping 0.5) over the same bf16 weights, given these gradients."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    out = []
    for _ in range(2):
        params = [torch.nn.Parameter(torch.linspace(-1, 1, g.numel() if g is not None else 6).reshape(-1).to(torch.bfloat16))
                  for g in grads]
        adamw = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05, foreach=False)
        out.append(FP16_UnfusedOptimizer(adamw, low_precision_dtype=torch.bfloat16, clip_grad=0.5, verbose=False))
        for p, g in zip(params, grads):  # after: the wrapper's set-up steps once on zero gradients and drops them
            p.grad = None if g is None else g.clone().reshape(p.shape)
    return out


@pytest.mark.parametrize("kind", ["clipped", "unclipped", "non-finite"])
def test_lean_bf16_step_is_deepspeeds_op_for_op(kind):
    """The foreach bf16 master-weight step equals FP16_UnfusedOptimizer.step bit for bit: clipping active or not, a
    parameter without a gradient, and a non-finite gradient (the step skipped)."""
    import deepspeed

    from tokenforge.engine.deepspeed import ensure_distributed_env
    from tokenforge.engine.speed import _bf16_step

    ensure_distributed_env()
    deepspeed.init_distributed(dist_backend="gloo")
    g = torch.Generator().manual_seed(1)
    scale = {"clipped": 3.0, "unclipped": 1e-3, "non-finite": 1.0}[kind]
    grads = [(torch.randn(n, generator=g) * scale).to(torch.bfloat16) for n in (48, 16, 256, 10)] + [None]
    if kind == "non-finite":
        grads[2][5] = float("inf")
    ours, theirs = _bf16_optimizers(grads)
    theirs.overflow_checker.check = ours.overflow_checker.check = lambda *a, **k: False  # as lean_engine sets it
    skipped = _bf16_step(ours)
    assert skipped == theirs.step() == (kind == "non-finite")
    assert ours._global_grad_norm == theirs._global_grad_norm
    for a, b in zip(ours.fp16_groups[0] + ours.fp32_groups[0], theirs.fp16_groups[0] + theirs.fp32_groups[0]):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in ours.fp32_groups[0] + theirs.fp32_groups[0])  # the fp32 gradients freed
    changed = not torch.equal(ours.fp16_groups[0][0], torch.linspace(-1, 1, 48).to(torch.bfloat16))
    assert changed == (kind != "non-finite")
    for low in ours.fp16_groups[0] + theirs.fp16_groups[0]:  # a next step with finite gradients: not skipped, as theirs
        low.grad = torch.full_like(low, 0.25)
    assert _bf16_step(ours) is theirs.step() is False
    assert all(torch.equal(a, b) for a, b in zip(ours.fp32_groups[0], theirs.fp32_groups[0]))


def test_adamw_options_choose_fused_on_a_gpu_and_the_for_loop_on_a_cpu():
    from tokenforge.engine.speed import adamw_options

    assert adamw_options("auto", torch.device("cuda", 0)) == {"fused": True}
    assert adamw_options("auto", torch.device("cpu")) == {"foreach": False}
    assert adamw_options("foreach", torch.device("cpu")) == {"foreach": True}


def test_throughput_benchmark_quick_run_writes_every_field(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--preset", "cpu", "--out",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "throughput-cpu-quick.json").read_text())
    assert result["peak_flops"]["fp32"]["used"] > 0 and result["peak_flops"]["bf16"]["used"] > 0
    fields = ("samples_per_s", "flops_per_sample", "achieved_flops", "mfu", "peak_memory_mb", "step_memory_mb")
    rows = result["rows"] + [r for g in result["groups"] for r in g["rows"]]
    assert len(result["rows"]) == 8 and not [r for r in rows if "error" in r], [r.get("error") for r in rows]
    assert all(all(r[f] is not None for f in fields) and r["samples_per_s"] > 0 and 0 < r["mfu"] for r in rows)
    subset = next(r for r in result["rows"] if r["subset"])
    assert subset["samples_per_step"] == 2 * subset["batch"] and subset["tokens_per_sequence"] == subset["side"] ** 2 // 4 + 1
    variants = {r["variant"] for g in result["groups"] for r in g["rows"]}
    assert {"defaults", "before (no speed options)", "plain torch (no DeepSpeed)", "compile default"} <= variants
    assert (tmp_path / "throughput-cpu-quick.md").read_text().count("| fp32 | tiny |") == 4
    # ops per step: counted for eager models, not for compiled ones; the lean engine's bf16 step dispatches fewer
    assert all(((r["ops_per_step"] or 0) > 0) == (r["options"]["compile"] == "off") for r in rows) and all(r["launches_per_step"] is None for r in rows)
    bf16 = {r["variant"]: r["ops_per_step"] for g in result["groups"] if g["precision"] == "bf16" for r in g["rows"]}
    assert bf16["defaults"] < bf16["before (no speed options)"], bf16


def test_throughput_benchmark_gpu_preset_runs_on_the_cpu(tmp_path):
    """The GPU preset's rows and variant groups (CUDA graphs' and max-autotune's compile modes included), shrunk, on
    the CPU: the command an H100/H200 session runs breaks nowhere that a CPU can see."""
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--preset", "gpu", "--out",
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "throughput-gpu-quick.json").read_text())
    rows = result["rows"] + [r for g in result["groups"] for r in g["rows"]]
    assert result["preset"] == "gpu" and not [r for r in rows if "error" in r], [r.get("error") for r in rows]
    assert {"compile reduce-overhead", "compile max-autotune"} <= {r["variant"] for r in rows}
    assert "| bf16 | tiny |" in (tmp_path / "throughput-gpu-quick.md").read_text()
