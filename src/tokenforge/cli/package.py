"""Bundle the results: metrics, plots, an HTML report, the model, the config, and a .tar.gz of it all.

Reads one evaluation file per task (row t of the accuracy matrix R) and the stats.json of every
stage, computes the continual-learning metrics (tokenforge.report.metrics), the storage bytes (pixels vs
tokens vs the replay memory) and the wall time per stage, and writes into --out:

    metrics.json            all numbers below, machine-readable
    accuracy_matrix.csv     R, one row per trained task, every cell (also tasks not trained yet)
    accuracy_matrix.png     R as a heatmap; average_accuracy.png: the learning curve
    report.html             one self-contained page (plots embedded) to read or mail
    model.safetensors (+ model.json beside it), config.yaml, versions.json, stats.json
    controls (metrics.json) each --controls NAME=FILE: a model trained on every task at once (the
                            blind control of a VQA or captioning run), its scores beside the run's
                            in report.html and `tokenforge summary`
    NAME.png                each --images NAME=FILE (e.g. the tokenizer's reconstruction grid), also shown
                            in report.html with NAME as its caption

The heatmap and the report's table leave the cells above the diagonal empty: row t is measured after
training task t, so column j > t is a task not learned yet (those accuracies only enter forward transfer).
Then the same files (minus this stage's own stats.json, whose wall time changes run to run) go into a
deterministic --archive. As the pipeline runs it for two tasks (workflow/rules/80_package.smk):

    tokenforge package --evaluations results/default/evaluate/task-0.json results/default/evaluate/task-1.json \\
        --stats shard=results/default/shard/stats.json tokenizer=results/default/tokenizer/stats.json \\
        tokenize=results/default/tokens/stats.json \\
        train-0=results/default/train/task-0/stats.json train-1=results/default/train/task-1/stats.json \\
        evaluate-0=results/default/evaluate/task-0.json evaluate-1=results/default/evaluate/task-1.json \\
        --model results/default/train/task-1/model.safetensors --config results/default/config.resolved.yaml \\
        --images reconstructions=results/default/tokenizer/reconstructions.png \\
        --out results/default/package --archive results/default/tokenforge-results.tar.gz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, require_file, write_json
from tokenforge.report import OPTIONAL_STATS, REQUIRED_STATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--evaluations",
        nargs="+",
        required=True,
        metavar="FILE",
        help="evaluation JSON of every task, one per trained task (any order; each names its task)",
    )
    parser.add_argument(
        "--stats",
        nargs="+",
        default=[],
        metavar="NAME=FILE",
        help="stats.json of each stage, e.g. shard=... tokenize=... tokenizer=... train-0=... evaluate-0=...; "
        f"needs {', '.join(REQUIRED_STATS)} and train-T for every task; {', '.join(OPTIONAL_STATS)} when the "
        "run made them",
    )
    parser.add_argument("--model", required=True, metavar="FILE", help="final model weights (.safetensors) to bundle")
    parser.add_argument("--config", required=True, metavar="FILE", help="resolved config (YAML) of the run to bundle")
    parser.add_argument("--out", required=True, metavar="DIR", help="bundle directory to write (replaced atomically)")
    parser.add_argument("--archive", required=True, metavar="FILE.tar.gz", help="archive of the bundle to write")
    parser.add_argument("--title", default="tokenforge results", help="title of report.html")
    parser.add_argument(
        "--registered-model",
        default=None,
        metavar="NAME",
        help="with --track: log the final model with its signature and register it as a new version of NAME in the "
        "MLflow model registry, alias 'latest-run' (default: not registered)",
    )
    parser.add_argument(
        "--controls",
        nargs="+",
        default=[],
        metavar="NAME=FILE",
        help="evaluation JSON of a control model trained on every task at once, shown beside the run's scores in "
        "metrics.json, the report and `tokenforge summary`, e.g. blind=results/vqa/control/blind/evaluate.json "
        "(the question-only control of multimodal.blind_control)",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        default=[],
        metavar="NAME=FILE",
        help="PNG images to bundle as NAME.png and show in report.html with NAME as caption, "
        "e.g. reconstructions=results/tokenizer/reconstructions.png",
    )


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.report.package import (
        archive_root,
        build_metrics,
        control_metrics,
        load_accuracy_matrix,
        load_stats,
        log_to_tracker,
        multimodal_metrics,
        package_versions,
        parse_images_args,
        parse_named,
        parse_stats_args,
        register_final_model,
        write_archive,
        write_bundle,
    )

    start = time.perf_counter()
    R = load_accuracy_matrix([Path(p) for p in args.evaluations])
    stats = load_stats(parse_stats_args(args.stats))
    model = require_file(args.model, "model file")
    config = require_file(args.config, "config file")
    images = parse_images_args(args.images)
    result = build_metrics(R, stats)
    result.update(multimodal_metrics([Path(p) for p in args.evaluations]))
    controls = parse_named(getattr(args, "controls", []), "--controls", "blind=results/vqa/control/blind/evaluate.json")
    result.update(control_metrics(controls, result["num_tasks"], result.get("metric")))
    versions = package_versions()
    out, archive = Path(args.out), Path(args.archive)
    if out.resolve() in archive.resolve().parents:
        raise TokenforgeError(f"--archive {archive}: must lie outside --out {out}, which is replaced as a whole")
    with atomic_dir(out) as tmp:
        write_bundle(tmp, result, versions, model, config, args.title, images)
        write_archive(tmp, archive, root=archive_root(archive))
        stats_out = {"num_tasks": result["num_tasks"], "archive_bytes": archive.stat().st_size}
        write_json(tmp / "stats.json", {**stats_out, "wall_s": time.perf_counter() - start})
    log_to_tracker(tracker, result, out, images)
    register_final_model(tracker, out, getattr(args, "registered_model", None))
