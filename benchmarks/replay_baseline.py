"""Plain experience replay (ER) on raw pixels at equal bytes on disk: the peer of tokenforge's memories.

What it measures: class-incremental learning (5 tasks x 2 classes, one 10-way head) of a 2-layer MLP on
flattened pixels, with no replay (naive fine-tuning), with ER whose class-balanced memory holds raw uint8
images within a byte budget, and with joint training on all tasks at once. For each run: the accuracy of
the model after every task on every task's test classes; reported are the final average accuracy (mean
over tasks of the final model's accuracy on that task's test classes), the plain accuracy on all test
samples, and the average forgetting, each as mean ± std over seeds.

Datasets:
  - digits: scikit-learn's bundled 8x8 digits (1797 images, values 0..16), 80/20 stratified train/test
    split with the seed.
  - fashion: Fashion-MNIST from the IDX files in /usr/share/datasets/fashion-mnist, the first
    --train-per-class training and --test-per-class test images of each class (default 300 and 300, as
    config/experiments/coretokens_fashion.yaml).
  The class order is np.random.default_rng(seed).permutation(10), two classes per task.

Bytes: one stored sample costs H*W bytes (uint8 pixels; digits' 0..16 fits a byte) plus 1 byte of label,
so an ER memory of B bytes holds floor(B / (H*W + 1)) samples (digits 65 B, fashion 785 B per sample),
split evenly over the classes seen so far (avalanche's ClassBalancedBuffer, reservoir sampling per class;
with fewer samples than classes some classes have none). A budget that holds 0 samples is no replay.
Default budgets: digits 0.5/1/2/5/10% of tokenforge's token file for digits (62,350 bytes); fashion the
same shares of --fashion-token-bytes, or, when that is 0 (unknown), of the raw sub-sample's bytes
(train-per-class * 10 * 785).

Learner: Linear(H*W, 256) - ReLU - Linear(256, 10) on pixels scaled to [0, 1], Adam lr 1e-3 (its state
kept across tasks, avalanche's default), cross-entropy, minibatch 32, 5 epochs per task (joint: 5 epochs
over all tasks' data). ER adds a replay minibatch of 32 memory samples to every minibatch of the current
task (avalanche ReplayPlugin), the loss is over both. One thread (torch.set_num_threads(1)).

Strategies come from avalanche-lib (Naive, ReplayPlugin + ClassBalancedBuffer, JointTraining); the
evaluation is plain torch on the test tensors. Avalanche lives in its own venv (never in .venv):

    python3 -m venv /tmp/ava-venv
    /tmp/ava-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 avalanche-lib scikit-learn

Run (about 2 minutes on 2 CPU cores for both datasets and 3 seeds, one process, one thread):

    /tmp/ava-venv/bin/python benchmarks/replay_baseline.py                     # both datasets, seeds 0 1 2
    /tmp/ava-venv/bin/python benchmarks/replay_baseline.py --only digits --seeds 0
    /tmp/ava-venv/bin/python benchmarks/replay_baseline.py --fashion-token-bytes 400637   # budgets as shares of
        # the Fashion-MNIST train token file's bytes (results/coretokens_fashion/shared/tokens-*/tokens/train.parquet
        # of config/experiments/coretokens_fashion.yaml; the README's run had 400,637)

Writes benchmarks/results/replay_baseline.json (every run and the meta: versions, machine, settings) and
benchmarks/results/replay_baseline.md (one table per dataset).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

warnings.filterwarnings("ignore")  # avalanche imports qpsolvers, which warns that no QP solver is installed
import avalanche
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.supervised import JointTraining, Naive

HERE = Path(__file__).resolve().parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TOKEN_BYTES = 62_350  # tokenforge's token file of digits (benchmarks/results/coretokens.md)
SHARES = [0.5, 1, 2, 5, 10]  # percent
N_CLASSES = 10
N_TASKS = 5
HIDDEN = 256
LR = 1e-3
MB_SIZE = 32


@dataclass
class Data:
    """A dataset as uint8 pixels (N, H*W) and int labels, with the pixel value of full intensity."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    hw: tuple[int, int]
    max_value: int

    @property
    def sample_bytes(self) -> int:
        return self.hw[0] * self.hw[1] + 1


class LabeledTensors(TensorDataset):
    """A TensorDataset with the `targets` list avalanche needs to split by class."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(x, y)
        self.targets = y.tolist()


class Replay(ReplayPlugin):
    """avalanche's ReplayPlugin, filling the buffer through post_adapt, what its deprecated update() calls."""

    def after_training_exp(self, strategy: Naive, **kwargs: object) -> None:
        self.storage_policy.post_adapt(strategy, strategy.experience)


def load_digits(seed: int) -> Data:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = d.data.astype(np.uint8)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return Data("digits", x_tr, y_tr, x_te, y_te, (8, 8), 16)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): big-endian magic (0x08 = uint8, then the number of dims), dims, then the data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} values for dims {dims}")
    return data.reshape(dims)


def first_per_class(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n samples of each class, in file order."""
    keep = np.concatenate([np.flatnonzero(y == c)[:n] for c in range(N_CLASSES)])
    keep.sort()
    return x[keep], y[keep]


def load_fashion(train_per_class: int, test_per_class: int) -> Data:
    parts = {}
    for split in ("train", "t10k"):
        x = read_idx(FASHION_DIR / f"{split}-images-idx3-ubyte.gz")
        y = read_idx(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
        n = train_per_class if split == "train" else test_per_class
        parts[split] = first_per_class(x.reshape(len(x), -1), y, n)
    return Data("fashion", *parts["train"], *parts["t10k"], (28, 28), 255)


def class_order(seed: int) -> list[int]:
    return [int(c) for c in np.random.default_rng(seed).permutation(N_CLASSES)]


def to_tensors(data: Data, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x.astype(np.float32) / data.max_value), torch.from_numpy(y)


def make_model(data: Data) -> nn.Module:
    return nn.Sequential(nn.Linear(data.hw[0] * data.hw[1], HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tasks: list[list[int]]) -> tuple[list[float], float]:
    """Accuracy on each task's test classes and on all test samples."""
    model.eval()
    correct = model(x).argmax(1) == y
    per_task = [correct[torch.isin(y, torch.tensor(t))].float().mean().item() for t in tasks]
    return per_task, correct.float().mean().item()


def forgetting(matrix: list[list[float]]) -> float | None:
    """Mean over all but the last task of (best earlier accuracy on it - final accuracy on it)."""
    if len(matrix) < 2:
        return None
    final = matrix[-1]
    drops = [max(row[i] for row in matrix[i:-1]) - final[i] for i in range(len(final) - 1)]
    return float(np.mean(drops))


def run_one(data: Data, seed: int, method: str, mem_samples: int, epochs: int) -> dict:
    """One whole task sequence (or joint training) for one seed; returns accuracies and memory size."""
    torch.manual_seed(seed)
    order = class_order(seed)
    tasks = [order[2 * t : 2 * t + 2] for t in range(N_TASKS)]
    x_tr, y_tr = to_tensors(data, data.x_train, data.y_train)
    x_te, y_te = to_tensors(data, data.x_test, data.y_test)
    bench = class_incremental_benchmark(
        {"train": LabeledTensors(x_tr, y_tr)}, class_order=order, num_classes_per_exp=[2] * N_TASKS
    )
    model = make_model(data)
    plugins: list[ReplayPlugin] = []
    policy: ClassBalancedBuffer | None = None
    if method == "er" and mem_samples > 0:
        policy = ClassBalancedBuffer(max_size=mem_samples, adaptive_size=True)
        plugins.append(Replay(mem_size=mem_samples, storage_policy=policy))
    kind = JointTraining if method == "joint" else Naive
    strategy = kind(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=MB_SIZE,
        train_epochs=epochs,
        eval_mb_size=256,
        device="cpu",
        plugins=plugins,
        evaluator=EvaluationPlugin(loggers=[]),
    )
    matrix: list[list[float]] = []
    if method == "joint":
        strategy.train(bench.train_stream, eval_streams=[])
        matrix.append(evaluate(model, x_te, y_te, tasks)[0])
    else:
        for exp in bench.train_stream:
            strategy.train(exp, eval_streams=[])
            matrix.append(evaluate(model, x_te, y_te, tasks)[0])
    per_task, acc_all = evaluate(model, x_te, y_te, tasks)
    stored = len(policy.buffer) if policy is not None else 0
    return {
        "dataset": data.name,
        "seed": seed,
        "method": method,
        "class_order": order,
        "tasks": tasks,
        "mem_samples": mem_samples,
        "stored_samples": stored,
        "stored_bytes": stored * data.sample_bytes,
        "final_avg_acc": float(np.mean(per_task)),
        "final_acc_all": acc_all,
        "final_acc_per_task": per_task,
        "forgetting": forgetting(matrix),
        "acc_matrix": matrix,
    }


def fashion_budgets(args: argparse.Namespace) -> tuple[list[int], str]:
    if args.fashion_bytes:
        return args.fashion_bytes, "given by --fashion-bytes"
    if args.fashion_token_bytes > 0:
        base, what = args.fashion_token_bytes, "tokenforge's Fashion-MNIST token file"
    else:
        base = args.train_per_class * N_CLASSES * (28 * 28 + 1)
        what = "the raw training sub-sample (tokenforge's token bytes for it unknown: --fashion-token-bytes 0)"
    return [int(base * s / 100) for s in SHARES], f"{'/'.join(f'{s:g}' for s in SHARES)}% of {base:,} bytes, {what}"


def variants(budgets: list[int], sample_bytes: int) -> list[tuple[str, int, int | None]]:
    """(method, memory samples, byte budget) of every run of one dataset and seed."""
    out: list[tuple[str, int, int | None]] = [("none", 0, None)]
    out += [("er", b // sample_bytes, b) for b in budgets]
    out.append(("joint", 0, None))
    return out


def run_dataset(name: str, args: argparse.Namespace, budgets: list[int]) -> list[dict]:
    runs = []
    for seed in args.seeds:
        data = load_digits(seed) if name == "digits" else load_fashion(args.train_per_class, args.test_per_class)
        for method, mem, budget in variants(budgets, data.sample_bytes):
            t0 = time.perf_counter()
            r = run_one(data, seed, method, mem, args.epochs)
            r["budget_bytes"] = budget
            r["seconds"] = round(time.perf_counter() - t0, 2)
            runs.append(r)
            what = method if budget is None else f"er {budget:,} B ({mem} samples)"
            print(f"  {name} seed {seed} {what}: final avg acc {100 * r['final_avg_acc']:.1f}%, "
                  f"all {100 * r['final_acc_all']:.1f}%, {r['seconds']:.1f} s", flush=True)
    return runs


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def table(name: str, runs: list[dict], info: dict) -> str:
    head = (f"**{info['title']}** ({info['samples']}): mean ± std over seeds {info['seeds']}. "
            f"Byte budgets: {info['budgets_from']}. One stored sample = {info['sample_bytes']} bytes.")
    rows = [head, "",
            "| memory | bytes stored | final average accuracy % | accuracy on all test samples % | forgetting % |",
            "|---|---|---|---|---|"]
    keys = sorted({(r["method"], r["budget_bytes"] or 0) for r in runs}, key=lambda k: ({"none": 0, "er": 1}.get(k[0], 2), k[1]))
    for method, budget in keys:
        group = [r for r in runs if r["method"] == method and (r["budget_bytes"] or 0) == budget]
        if method == "er":
            label = f"ER {budget:,} B ({group[0]['mem_samples']} samples)"
            stored = f"{group[0]['stored_bytes']:,}"
        else:
            label, stored = ("none (fine-tuning)" if method == "none" else "joint"), "–"
        forg = [r["forgetting"] for r in group if r["forgetting"] is not None]
        rows.append(f"| {label} | {stored} | {mean_std([r['final_avg_acc'] for r in group])} | "
                    f"{mean_std([r['final_acc_all'] for r in group])} | {mean_std(forg) if forg else '–'} |")
    return "\n".join(rows) + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def meta(args: argparse.Namespace, infos: dict, wall: float) -> dict:
    import sklearn

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "avalanche": avalanche.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "torch_threads": torch.get_num_threads()},
        "settings": {
            "model": f"Linear(H*W, {HIDDEN}) - ReLU - Linear({HIDDEN}, {N_CLASSES}), single head",
            "optimizer": f"Adam lr {LR} (state kept across tasks)",
            "train_mb_size": MB_SIZE,
            "replay_mb_size": MB_SIZE,
            "epochs_per_task": args.epochs,
            "buffer": "avalanche ReplayPlugin + ClassBalancedBuffer(adaptive_size=True)",
            "tasks": f"{N_TASKS} x 2 classes, order np.random.default_rng(seed).permutation(10)",
            "seeds": args.seeds,
            "train_per_class_fashion": args.train_per_class,
            "test_per_class_fashion": args.test_per_class,
            "fashion_token_bytes": args.fashion_token_bytes or None,
        },
        "datasets": infos,
        "wall_seconds": round(wall, 1),
    }


def dataset_info(name: str, args: argparse.Namespace) -> tuple[dict, list[int]]:
    if name == "digits":
        budgets = args.digits_bytes
        return {"title": "Split-digits (8x8, 10 classes, 5 tasks)", "sample_bytes": 65, "seeds": args.seeds,
                "samples": "sklearn digits, 80/20 stratified split per seed",
                "budgets_from": f"{budgets} bytes (defaults: 0.5/1/2/5/10% of the digits token file, "
                                f"{DIGITS_TOKEN_BYTES:,} bytes)",
                "budgets": budgets}, budgets
    budgets, source = fashion_budgets(args)
    return {"title": "Split-FashionMNIST (28x28, 10 classes, 5 tasks)", "sample_bytes": 785, "seeds": args.seeds,
            "samples": f"first {args.train_per_class} train / {args.test_per_class} test images per class",
            "budgets_from": source, "budgets": budgets}, budgets


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["digits", "fashion"], help="one dataset (default: both)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5, help="epochs per task (joint: over all data)")
    p.add_argument("--digits-bytes", type=int, nargs="+",
                   default=[int(DIGITS_TOKEN_BYTES * s / 100) for s in SHARES])
    p.add_argument("--fashion-bytes", type=int, nargs="+", help="byte budgets for fashion (overrides the shares)")
    p.add_argument("--fashion-token-bytes", type=int, default=0,
                   help="bytes of tokenforge's Fashion-MNIST token file; 0 = unknown, use the raw sub-sample's bytes")
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=300)
    p.add_argument("--out", type=Path, default=HERE / "results" / "replay_baseline")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    names = [args.only] if args.only else ["digits", "fashion"]
    runs: list[dict] = []
    infos: dict = {}
    intro = (f"2-layer MLP (hidden {HIDDEN}), Adam lr {LR}, minibatch {MB_SIZE} (+{MB_SIZE} replayed), {args.epochs} "
             f"epochs per task, class-balanced memory of uint8 images + 1-byte labels (avalanche "
             f"{avalanche.__version__}). Final average accuracy = mean over the 5 tasks of the final model's "
             "accuracy on that task's test classes. Written by benchmarks/replay_baseline.py.\n")
    md = ["# Experience replay on raw pixels at equal bytes\n", intro]
    for name in names:
        info, budgets = dataset_info(name, args)
        print(f"{name}: budgets {budgets} bytes", flush=True)
        ds_runs = run_dataset(name, args, budgets)
        runs += ds_runs
        infos[name] = info
        md.append(table(name, ds_runs, info))
    wall = time.perf_counter() - t0
    md.append(f"Wall time {wall / 60:.1f} min on {cpu_model()}, 1 torch thread.\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta(args, infos, wall), "runs": runs}, indent=1))
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
