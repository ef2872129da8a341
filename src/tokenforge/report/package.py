"""The package stage's pieces: the bundle folder (metrics.json, versions.json, the accuracy matrix as CSV and
heatmap, the learning curve, report.html, the final model and config, the --images), its deterministic .tar.gz,
the tracker's metrics and artifacts, and the final model's registration in MLflow.

The stage's entry points, all importable from here:

- `tokenforge.report.inputs`: the evaluation and stats files, the --stats / --images arguments, and the numbers of
  metrics.json and versions.json (re-exported below: `load_accuracy_matrix`, `build_metrics`, ...);
- `tokenforge.report.plots`: the accuracy heatmap and learning curve as matplotlib Figures (written here as PNG);
- `tokenforge.report.html`: report.html (`render_report`);
- this module: the bundle's files, the archive, the tracker.

The heatmap and the report's table leave the cells above the diagonal empty: row t is measured after training
task t, so column j > t is a task not learned yet (those accuracies only enter forward transfer); the CSV keeps
every measured cell. What the stage writes and how the pipeline calls it: tokenforge/cli/package.py
(`tokenforge package --help`).
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np

from tokenforge.io import MARKER, atomic_file, read_json
from tokenforge.report import metrics, plots
from tokenforge.report.html import render_report
from tokenforge.report.inputs import (
    PACKAGES,
    build_metrics,
    control_metrics,
    load_accuracy_matrix,
    load_stats,
    multimodal_metrics,
    package_versions,
    parse_images_args,
    parse_named,
    parse_stats_args,
    storage_bytes,
    tokenizer_numbers,
    wall_times,
)
from tokenforge.report.plots import learned

__all__ = [
    "PACKAGES", "archive_root", "build_metrics", "control_metrics", "learned", "load_accuracy_matrix", "load_stats", "log_to_tracker",
    "multimodal_metrics", "package_versions", "parse_images_args", "parse_named", "parse_stats_args", "plot_accuracy_matrix",
    "plot_average_accuracy", "register_final_model", "render_report", "storage_bytes", "tokenizer_numbers",
    "wall_times", "write_archive", "write_bundle", "write_matrix_csv",
]  # fmt: skip

# Not part of the archive: the marker is internal, stats.json holds this run's wall time.
NOT_ARCHIVED = (MARKER, "stats.json")


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


def _save(fig, path: Path) -> None:
    # No "Software" metadata: the PNG bytes depend only on the numbers and the matplotlib version.
    fig.savefig(path, format="png", metadata={"Software": None})


def plot_accuracy_matrix(R: np.ndarray, path: Path) -> None:
    """The accuracy heatmap (`plots.accuracy_matrix_figure`) as a PNG at `path`."""
    _save(plots.accuracy_matrix_figure(R), path)


def plot_average_accuracy(values: list[float], path: Path) -> None:
    """The average accuracy after each task (`plots.average_accuracy_figure`) as a PNG at `path`."""
    _save(plots.average_accuracy_figure(values), path)


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


# --- tracking ---------------------------------------------------------------------------------


def log_to_tracker(tracker, result: dict, out: Path, images: dict[str, Path] | None = None) -> None:
    """The headline numbers, the learning curve (one step per task), the plots, the --images and the report."""
    tracker.log_params({"num_tasks": result["num_tasks"]})
    tracker.log_metrics(metrics.headline_metrics(result))
    for t, value in enumerate(result["average_accuracy"]):
        tracker.log_metrics({"average_accuracy": value}, step=t)
    for name, control in (result.get("controls") or {}).items():  # e.g. control_blind_vqa_accuracy
        tracker.log_metrics({f"control_{name}_{score}": value for score, value in control["average_scores"].items()})
    for name in ("metrics.json", "accuracy_matrix.csv", "accuracy_matrix.png", "average_accuracy.png", "report.html"):
        tracker.log_artifact(out / name)
    for name in images or {}:
        tracker.log_artifact(out / f"{name}.png")
