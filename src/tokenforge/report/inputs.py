"""The package stage's inputs and the numbers it derives from them: the accuracy matrix from the evaluation files
(and, for VQA and captioning, every score's matrix), the --stats and --images arguments, the stats files, and what
goes into metrics.json (metrics, storage bytes, wall times, tokenizer numbers) and versions.json.

What the stage writes and how the pipeline calls it: tokenforge/cli/package.py (`tokenforge package --help`).
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json, require_file
from tokenforge.report import metrics

# Reported in versions.json and the report: what a reader needs to rerun the numbers.
PACKAGES = ("tokenforge", "torch", "timm", "deepspeed", "mlflow", "snakemake", "webdataset", "pyarrow", "numpy")
# --images NAME=FILE becomes NAME.png in the bundle: a plain name that cannot clash with the bundle's own plots.
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
OWN_PLOTS = ("accuracy_matrix", "average_accuracy")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Optional tokenizer numbers shown when its stats.json has them (tokenizers with codebook pruning do).
TOKENIZER_EXTRAS = ("used_codes", "codebook_size", "trained_codebook_size", "perplexity")
# Where a text family's memory kept its tokens on scenes (families/text_memory.py): metrics.json's memory holds
# their means over tasks when the train stats have them.
NAMED_OBJECT_STATS = ("named_object_share", "named_object_area")


# --- inputs -----------------------------------------------------------------------------------


def load_accuracy_matrix(paths: list[Path]) -> np.ndarray:
    """Stack the evaluation files into R, row t from the file whose "task" is t.

    The tasks must be exactly 0..N-1, once each, and every row must hold N accuracies.
    """
    rows: dict[int, list[float]] = {}
    for path in paths:
        task, accuracy = _read_evaluation(path)
        if task in rows:
            raise TokenforgeError(f"{path}: task {task} is given twice; pass one evaluation per task")
        if len(accuracy) != len(paths):
            raise TokenforgeError(
                f"{path}: 'accuracy' has {len(accuracy)} entries but {len(paths)} evaluation files were given; "
                "pass one evaluation per task, each evaluated on every task"
            )
        rows[task] = accuracy
    missing = sorted(set(range(len(paths))) - set(rows))
    if missing:
        raise TokenforgeError(f"--evaluations: no evaluation for task(s) {missing}; tasks must be 0..{len(paths) - 1}")
    return metrics.as_matrix([rows[t] for t in range(len(paths))])


def _read_evaluation(path: Path, data: Any = None) -> tuple[int, list[float]]:
    """(task, accuracies) of an evaluation file, checked; `data`: its JSON when already read."""
    data = read_json(path) if data is None else data
    if not isinstance(data, dict):
        raise TokenforgeError(f"{path}: expected a JSON object with 'task' and 'accuracy'")
    task, accuracy = data.get("task"), data.get("accuracy")
    if not isinstance(task, int) or isinstance(task, bool) or task < 0:
        raise TokenforgeError(f"{path}: 'task' must be a task index >= 0, got {task!r}")
    # CIDEr (captioning's headline score) is not a fraction: it runs from 0 to 10.
    fits = _is_score if data.get("metric") == "cider" else _is_fraction
    if not isinstance(accuracy, list) or not all(fits(a) for a in accuracy):
        raise TokenforgeError(f"{path}: 'accuracy' must be a list of {data.get('metric') or 'accuracies'} in [0, {10 if fits is _is_score else 1}]")
    return task, [float(a) for a in accuracy]


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _is_score(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 10.0


def multimodal_metrics(paths: list[Path]) -> dict:
    """VQA and captioning runs: every score's task x task matrix with its metrics (average, forgetting, backward
    transfer), the headline score's name and the last row's example answers; {} for classification."""
    rows = {read_json(p)["task"]: read_json(p) for p in paths}
    last = rows[max(rows)]
    if "scores" not in last:
        return {}
    names = sorted(last["scores"])
    matrices = {name: metrics.summarize([rows[t]["scores"][name] for t in sorted(rows)]) for name in names}
    return {"family": last.get("family"), "metric": last.get("metric"), "score_matrices": matrices,
            "groups": last.get("groups"), "examples": last.get("examples")}  # fmt: skip


def control_metrics(named: dict[str, Path], num_tasks: int, metric: str | None) -> dict:
    """Control models beside the run (--controls NAME=FILE), e.g. the blind control of a VQA or captioning run: each
    FILE is the evaluation of one model trained on every task at once, scored on every task with the run's metric.
    {"controls": {name: {"scores": {score: per task}, "average_scores": {score: mean}}}}; {} without controls."""
    controls = {}
    for name, path in named.items():
        data = read_json(path)
        _, accuracy = _read_evaluation(path, data)
        if len(accuracy) != num_tasks:
            raise TokenforgeError(f"{path}: scores {len(accuracy)} tasks; the run has {num_tasks}")
        if data.get("metric") != metric:
            raise TokenforgeError(f"{path}: its metric is {data.get('metric')!r}; the run's is {metric!r}")
        scores = data.get("scores") or {"accuracy": accuracy}
        controls[name] = {"scores": scores, "average_scores": {k: float(np.mean(v)) for k, v in scores.items()}}
    return {"controls": controls} if controls else {}


def parse_named(items: list[str], flag: str, example: str) -> dict[str, Path]:
    """`NAME=FILE` strings of a flag as {name: path}, in the order given."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TokenforgeError(f"{flag} {item!r}: expected NAME=FILE, e.g. {example}")
        if name in named:
            raise TokenforgeError(f"{flag} {name}: given twice")
        named[name] = Path(path)
    return named


def parse_stats_args(items: list[str]) -> dict[str, Path]:
    """`NAME=FILE` strings as {name: path}, in the order given."""
    named = parse_named(items, "--stats", "shard=results/shard/stats.json")
    if "total" in named:
        raise TokenforgeError("--stats total: 'total' is reserved for the sum of the wall times")
    return named


def parse_images_args(items: list[str]) -> dict[str, Path]:
    """`NAME=FILE` strings as {name: path}, in the order given; each FILE must be a PNG."""
    images: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path or not IMAGE_NAME.fullmatch(name):
            raise TokenforgeError(
                f"--images {item!r}: expected NAME=FILE with NAME of letters, digits, - and _, "
                "e.g. reconstructions=results/tokenizer/reconstructions.png"
            )
        if name in images:
            raise TokenforgeError(f"--images {name}: given twice")
        if name in OWN_PLOTS:
            raise TokenforgeError(f"--images {name}: is a name the bundle uses")
        file = require_file(path, "image")
        with file.open("rb") as f:
            if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise TokenforgeError(f"{file}: not a PNG image")
        images[name] = file
    return images


def load_stats(named: dict[str, Path]) -> dict[str, dict]:
    """Read every stats file; each must be a JSON object with a numeric "wall_s"."""
    stats = {}
    for name, path in named.items():
        data = read_json(path)
        if not isinstance(data, dict):
            raise TokenforgeError(f"{path}: expected a JSON object")
        _number(data, "wall_s", path)
        stats[name] = {"path": path, "data": data}
    return stats


def _stat(stats: dict[str, dict], name: str, *keys: str) -> Any:
    """stats[name]["data"][keys...], with an error naming the flag or the file if absent."""
    if name not in stats:
        raise TokenforgeError(f"--stats: no {name}=FILE given; the bundle needs the {name} stage's stats.json")
    value = stats[name]["data"]
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            where = ".".join(keys[: depth + 1])
            raise TokenforgeError(f"{stats[name]['path']}: missing key {where!r}")
        value = value[key]
    return value


def _number(data: dict, key: str, path: Path) -> float:
    value = data.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TokenforgeError(f"{path}: {key!r} must be a number, got {value!r}")
    return value


def _count(stats: dict[str, dict], name: str, *keys: str) -> float:
    value = _stat(stats, name, *keys)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise TokenforgeError(f"{stats[name]['path']}: {'.'.join(keys)!r} must be a number >= 0, got {value!r}")
    return value


# --- numbers ----------------------------------------------------------------------------------


def build_metrics(R: np.ndarray, stats: dict[str, dict]) -> dict:
    """Everything that goes into metrics.json."""
    result = metrics.summarize(R)
    result["bytes"] = storage_bytes(stats, result["num_tasks"])
    result["wall_time_s"] = wall_times(stats)
    result["tokenizer"] = tokenizer_numbers(stats) if "tokenizer" in stats else None
    last = stats[f"train-{result['num_tasks'] - 1}"]["data"]
    # What the memory was, for comparing runs (older train stats lack these keys: None).
    result["memory"] = {key: last.get(f"memory_{key}") for key in ("method", "budget_bytes", "samples", "tokens_per_sample")}
    result["memory"].update(named_object_numbers(stats, result["num_tasks"]))
    # The shortcut probe after each task (continual/shortcut.py), beside the old tasks' accuracy it explains.
    result["shortcut_auc"] = [stats[f"train-{t}"]["data"].get("shortcut_auc") for t in range(result["num_tasks"])]
    result["old_tasks_accuracy"] = [float(np.mean(R[t][:t])) if t else None for t in range(result["num_tasks"])]
    return result


def named_object_numbers(stats: dict[str, dict], num_tasks: int) -> dict[str, float]:
    """VQA on scenes: the mean over the tasks whose train stats have them of named_object_share (the share of a
    task's kept tokens on the objects their questions name) and named_object_area (those objects' share of the grid,
    what random tokens get); {} when no task has them (other data, other families, older stats)."""
    numbers = {}
    for key in NAMED_OBJECT_STATS:
        values = [stats[f"train-{t}"]["data"].get(key) for t in range(num_tasks)]
        values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if values:
            numbers[key] = float(np.mean(values))
    return numbers


def tokenizer_numbers(stats: dict[str, dict]) -> dict[str, float]:
    """PSNR and codebook usage, and the pruning numbers when the tokenizer's stats.json has them."""
    numbers = {
        "psnr": _count(stats, "tokenizer", "psnr"),
        "codebook_usage": _count(stats, "tokenizer", "codebook_usage"),
    }
    for key in TOKENIZER_EXTRAS:
        if key in _stat(stats, "tokenizer"):
            numbers[key] = _count(stats, "tokenizer", key)
    return numbers


def storage_bytes(stats: dict[str, dict], num_tasks: int) -> dict:
    """Bytes per image of each storage form, the same for the whole dataset, and the memory.

    Dataset totals count train and test images: that is what a user keeps on disk. Without shard stats
    (imported tokens) there are no pixel forms: they are None.
    """
    counted = "shard" if "shard" in stats else "tokenize"
    images = _count(stats, counted, "counts", "train") + _count(stats, counted, "counts", "test")
    pixels = "shard" in stats
    per_image = {
        "raw_pixels": _count(stats, "tokenize", "bytes_per_image", "raw_pixels") if pixels else None,
        "pixel_shards": _count(stats, "tokenize", "bytes_per_image", "pixel_shards") if pixels else None,
        "tokens": _count(stats, "tokenize", "bytes_per_image", "tokens"),
    }
    memory = [int(_count(stats, f"train-{t}", "memory_bytes")) for t in range(num_tasks)]
    result: dict[str, Any] = {f"{form}_per_image": value for form, value in per_image.items()}
    result.update(
        {f"dataset_{form}": None if value is None else int(round(value * images)) for form, value in per_image.items()}
    )
    result.update({"dataset_images": int(images), "memory": memory[-1], "memory_per_task": memory})
    return result


def wall_times(stats: dict[str, dict]) -> dict[str, float]:
    """Each stage's own wall time and their sum, in the order the stats were given."""
    times = {name: float(entry["data"]["wall_s"]) for name, entry in stats.items()}
    times["total"] = float(sum(times.values()))
    return times


def package_versions() -> dict:
    """Python, platform and the versions of the packages that produced the numbers (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}
