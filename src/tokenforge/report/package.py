"""The package stage's pieces: the accuracy matrix from the evaluation files, metrics and storage bytes, plots,
the self-contained report.html, the bundle folder and its deterministic .tar.gz, and the final model's
registration in MLflow.

The heatmap and the report's table leave the cells above the diagonal empty: row t is measured after training
task t, so column j > t is a task not learned yet (those accuracies only enter forward transfer); the CSV keeps
every measured cell. What the stage writes and how the pipeline calls it: tokenforge/cli/package.py
(`tokenforge package --help`).
"""

from __future__ import annotations

import base64
import csv
import gzip
import html
import importlib.metadata
import json
import platform
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from tokenforge.errors import TokenforgeError
from tokenforge.io import MARKER, atomic_file, read_json, require_file
from tokenforge.report import ACCURACY_HEADLINES, metrics

# Reported in versions.json and the report: what a reader needs to rerun the numbers.
PACKAGES = ("tokenforge", "torch", "timm", "deepspeed", "mlflow", "snakemake", "webdataset", "pyarrow", "numpy")
# Not part of the archive: the marker is internal, stats.json holds this run's wall time.
NOT_ARCHIVED = (MARKER, "stats.json")
# --images NAME=FILE becomes NAME.png in the bundle: a plain name that cannot clash with the bundle's own plots.
IMAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
OWN_PLOTS = ("accuracy_matrix", "average_accuracy")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Optional tokenizer numbers shown when its stats.json has them (tokenizers with codebook pruning do).
TOKENIZER_EXTRAS = ("used_codes", "codebook_size", "trained_codebook_size", "perplexity")


def register_final_model(tracker, out: Path, name: str) -> None:
    """The final model into the MLflow model registry as a new version of `name`, alias "latest-run"."""
    if not name or not getattr(tracker, "enabled", False):
        return
    if not (out / "model.json").is_file() or "family" in read_json(out / "model.json"):
        return  # BLIP (vqa, captioning): its files are in the bundle and the run's artifacts; the registry holds ViTs
    import torch

    from tokenforge.models.vit import load_model

    model = load_model(out)
    h, w = model.config.grid
    if model.config.input == "tokens":
        example = torch.zeros(1, h, w, dtype=torch.int64)  # a grid of code ids
    else:
        example = torch.zeros(1, h, w, model.config.code_dim, dtype=torch.uint8)  # pixel patches
    tracker.register_model(model, example, name)


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


def _read_evaluation(path: Path) -> tuple[int, list[float]]:
    data = read_json(path)
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


def parse_stats_args(items: list[str]) -> dict[str, Path]:
    """`NAME=FILE` strings as {name: path}, in the order given."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise TokenforgeError(f"--stats {item!r}: expected NAME=FILE, e.g. shard=results/shard/stats.json")
        if name in named:
            raise TokenforgeError(f"--stats {name}: given twice")
        if name == "total":
            raise TokenforgeError("--stats total: 'total' is reserved for the sum of the wall times")
        named[name] = Path(path)
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
    # The shortcut probe after each task (continual/shortcut.py), beside the old tasks' accuracy it explains.
    result["shortcut_auc"] = [stats[f"train-{t}"]["data"].get("shortcut_auc") for t in range(result["num_tasks"])]
    result["old_tasks_accuracy"] = [float(np.mean(R[t][:t])) if t else None for t in range(result["num_tasks"])]
    return result


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


# --- outputs ----------------------------------------------------------------------------------


def write_bundle(
    out: Path,
    result: dict,
    versions: dict,
    model: Path,
    config: Path,
    title: str,
    images: dict[str, Path] | None = None,
) -> None:
    """Every file of the bundle, into the (temporary) directory `out`; `images` maps NAME to a PNG to add."""
    (out / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "versions.json").write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")
    write_matrix_csv(np.asarray(result["accuracy_matrix"]), out / "accuracy_matrix.csv")
    plot_accuracy_matrix(np.asarray(result["accuracy_matrix"]), out / "accuracy_matrix.png")
    plot_average_accuracy(result["average_accuracy"], out / "average_accuracy.png")
    shutil.copyfile(model, out / "model.safetensors")
    if (model.parent / "model.json").is_file():  # the architecture, so `tokenforge.model.load_model` can read it
        shutil.copyfile(model.parent / "model.json", out / "model.json")
    for name in ("blip_settings.json", "blip_config.json"):  # BLIP (vqa, captioning): `BlipModel.load(bundle)` reads them
        if (model.parent / name).is_file():
            shutil.copyfile(model.parent / name, out / name)
    shutil.copyfile(config, out / "config.yaml")
    for name, path in (images or {}).items():
        shutil.copyfile(path, out / f"{name}.png")
    page = render_report(title, result, versions, config.read_text(errors="replace"), out, list(images or {}))
    (out / "report.html").write_text(page, encoding="utf-8")


def write_matrix_csv(R: np.ndarray, path: Path) -> None:
    """Header `after_task,task_0,...`; row t holds R[t] at full precision."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["after_task"] + [f"task_{j}" for j in range(R.shape[1])])
        for t, row in enumerate(R):
            writer.writerow([t] + [repr(float(v)) for v in row])


def _figure(width: float, height: float):
    # A bare Figure with the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    # No "Software" metadata: the PNG bytes depend only on the numbers and the matplotlib version.
    fig.savefig(path, format="png", metadata={"Software": None})


def learned(R: np.ndarray) -> np.ndarray:
    """Boolean mask of the cells of R on or below the diagonal: tasks learned by the time of the row.

    Row t is measured after training task t, so a cell (t, j > t) is a task not trained yet: the heatmap
    and the report's table leave it empty (the CSV and metrics.json keep its measured accuracy).
    """
    return np.tri(*np.shape(R), dtype=bool)


def plot_accuracy_matrix(R: np.ndarray, path: Path) -> None:
    """Heatmap of R with each accuracy written in its cell; cells of tasks not trained yet are left empty."""
    n = R.shape[0]
    fig = _figure(1.6 + 0.7 * n, 1.2 + 0.6 * n)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_array(R, mask=~learned(R)), vmin=0.0, vmax=1.0, cmap="viridis")
    fontsize = max(5, 11 - n // 3)
    for i, j in zip(*np.nonzero(learned(R))):
        # Dark text on the bright end of viridis, white on the dark end.
        color = "black" if R[i, j] > 0.6 else "white"
        ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", color=color, fontsize=fontsize)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title("accuracy matrix")
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    _save(fig, path)


def plot_average_accuracy(values: list[float], path: Path) -> None:
    """Average accuracy over the tasks seen so far, after each task."""
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot()
    ax.plot(range(len(values)), values, marker="o")
    ax.set_xticks(range(len(values)))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("after training task")
    ax.set_ylabel("average accuracy (tasks seen)")
    ax.set_title("average accuracy after each task")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def archive_root(archive: Path) -> str:
    """Top folder inside the archive: its file name without .tar.gz, e.g. tokenforge-results/."""
    name = archive.name
    for suffix in (".tar.gz", ".tgz"):
        if name.endswith(suffix):
            return name[: -len(suffix)] or "bundle"
    return archive.stem or "bundle"


def write_archive(src: Path, archive: Path, root: str) -> None:
    """A .tar.gz of `src`'s files under `root/`, byte-identical for identical files.

    Sorted members, zero timestamps and owners, and no name or time in the gzip header.
    """
    with atomic_file(archive) as tmp, tmp.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(p for p in src.iterdir() if p.name not in NOT_ARCHIVED):
                    info = tarfile.TarInfo(f"{root}/{path.name}")
                    info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
                    with path.open("rb") as f:
                        tar.addfile(info, f)


# --- report -----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _fraction(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _usage(value: float) -> str:
    # A fraction of the codebook, or (if a tokenizer reports it so) a number of codes in use.
    return _pct(value) if value <= 1 else f"{value:,.0f} codes"


def _bytes(value: float) -> str:
    return f"{value:,.0f} B" if value < 10_000 else f"{value:,.0f} B ({value / 2**20:,.2f} MiB)"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _summary_rows(result: dict) -> list[list[Any]]:
    b, tok = result["bytes"], result["tokenizer"]
    return [
        ["tasks", result["num_tasks"]],
        *([name.replace("_", " "), _pct(result[name])] for name in (*ACCURACY_HEADLINES, "forward_transfer")),
        ["replay memory after the last task", _bytes(b["memory"])],
        ["memory / dataset token bytes", _pct(b["memory"] / b["dataset_tokens"] if b["dataset_tokens"] else None)],
        *(_tokenizer_rows(tok) if tok is not None else []),
        ["total wall time", f"{result['wall_time_s']['total']:.1f} s"],
    ]


def _tokenizer_rows(tok: dict) -> list[list[Any]]:
    rows = [["tokenizer PSNR", f"{tok['psnr']:.2f} dB"], ["tokenizer codebook usage", _usage(tok["codebook_usage"])]]
    if "used_codes" in tok and "trained_codebook_size" in tok:
        used, trained = tok["used_codes"], tok["trained_codebook_size"]
        rows.append(["tokenizer codes used", f"{used:,.0f} of {trained:,.0f} trained"])
    if "codebook_size" in tok:
        rows.append(["codebook size after pruning", f"{tok['codebook_size']:,.0f}"])
    if "perplexity" in tok:
        rows.append(["tokenizer perplexity", f"{tok['perplexity']:.1f}"])
    return rows


def _figure_html(path: Path, caption: str) -> str:
    return f"<figure>{_img(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _bytes_rows(b: dict) -> list[list[Any]]:
    raw = b["raw_pixels_per_image"]
    rows = []
    for form, label in (("raw_pixels", "raw pixels"), ("pixel_shards", "pixel shards (PNG)"), ("tokens", "VQ tokens")):
        per_image = b[f"{form}_per_image"]
        if per_image is None:  # imported tokens: no pixels were stored
            continue
        share = _pct(per_image / raw) if raw else "n/a"
        rows.append([label, f"{per_image:,.1f}", _bytes(b[f"dataset_{form}"]), share])
    return rows


def _score_sections(result: dict) -> list[str]:
    """VQA and captioning: each score's matrix (the 'accuracy' plots below show the headline score) and examples."""
    out = []
    for name, summary in (result.get("score_matrices") or {}).items():
        M = summary["accuracy_matrix"]
        rows = [[t] + [f"{v:.4f}" if j <= t else "" for j, v in enumerate(row)] for t, row in enumerate(M)]
        head = f"<h2>{html.escape(name)} (row: after training task, column: evaluated on task)</h2>"
        numbers = f"<p>final average {summary['final_average_accuracy']:.4f}, forgetting {summary['average_forgetting']:.4f}, " \
                  f"backward transfer {summary['backward_transfer']:.4f}</p>"  # fmt: skip
        out.append(head + _table(["after task"] + [f"task {j}" for j in range(len(M))], rows) + numbers)
    for t, examples in enumerate(result.get("examples") or []):
        rows = [[e["prompt"], e["prediction"], " | ".join(e["references"])] for e in examples]
        out.append(f"<h3>Task {t}: examples after the last task</h3>" + _table(["prompt", "prediction", "references"], rows))
    return out


def render_report(
    title: str, result: dict, versions: dict, config_text: str, bundle: Path, images: list[str] | tuple = ()
) -> str:
    """report.html: one page, no external files (the plots are data URIs), every value escaped.

    `images` names the extra NAME.png files in `bundle`, shown with their name as caption.
    """
    R, n, b = result["accuracy_matrix"], result["num_tasks"], result["bytes"]
    matrix_rows = [[t] + [f"{v:.4f}" if j <= t else "" for j, v in enumerate(row)] for t, row in enumerate(R)]
    old, auc = result.get("old_tasks_accuracy", [None] * n), result.get("shortcut_auc", [None] * n)
    curve_rows = [
        [t, f"{a:.4f}", _fraction(old[t]), _fraction(auc[t]), f"{b['memory_per_task'][t]:,}"]
        for t, a in enumerate(result["average_accuracy"])
    ]
    wall_rows = [[name, f"{s:.2f}"] for name, s in result["wall_time_s"].items()]
    version_rows = [["python", versions["python"]], ["platform", versions["platform"]]]
    version_rows += [[name, v or "not installed"] for name, v in versions["packages"].items()]
    figures = "".join(_figure_html(bundle / f"{name}.png", name) for name in images)
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>" + _table(["metric", "value"], _summary_rows(result)),
        *_score_sections(result),
        "<h2>Accuracy</h2>" + _img(bundle / "accuracy_matrix.png", "accuracy matrix")
        + _img(bundle / "average_accuracy.png", "average accuracy after each task"),
        "<h3>Accuracy matrix (row: after training task, column: evaluated on task; empty: not trained yet)</h3>"
        + _table(["after task"] + [f"task {j}" for j in range(n)], matrix_rows),
        "<h3>After each task (shortcut AUC: how well a linear probe tells a replayed view from the whole sample; "
        "0.5 = indistinguishable, near 1 = replay can teach 'this view = an old class')</h3>"
        + _table(["after task", "average accuracy", "old tasks' accuracy", "shortcut AUC", "memory bytes"], curve_rows),
        f"<h2>Storage ({b['dataset_images']:,} images, train + test)</h2>"
        + _table(["form", "bytes per image", "dataset", "of raw pixels"], _bytes_rows(b)),
        *(["<h2>Images</h2>" + figures] if images else []),
        "<h2>Wall time per stage (s)</h2>" + _table(["stage", "wall time (s)"], wall_rows),
        "<h2>Config</h2><pre>" + html.escape(config_text) + "</pre>",
        "<h2>Versions</h2>" + _table(["package", "version"], version_rows),
    ]
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:48%;margin:.5em 1% 0 0}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto}"
        "figure{margin:.5em 0}figure img{max-width:100%;image-rendering:pixelated}figcaption{color:#555}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )


# --- tracking ---------------------------------------------------------------------------------


def log_to_tracker(tracker, result: dict, out: Path, images: dict[str, Path] | None = None) -> None:
    """The headline numbers, the learning curve (one step per task), the plots, the --images and the report."""
    tracker.log_params({"num_tasks": result["num_tasks"]})
    tracker.log_metrics(metrics.headline_metrics(result))
    for t, value in enumerate(result["average_accuracy"]):
        tracker.log_metrics({"average_accuracy": value}, step=t)
    for name in ("metrics.json", "accuracy_matrix.csv", "accuracy_matrix.png", "average_accuracy.png", "report.html"):
        tracker.log_artifact(out / name)
    for name in images or {}:
        tracker.log_artifact(out / f"{name}.png")
