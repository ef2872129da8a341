r"""Evaluate the model after task t on every task's test set: one row of the accuracy matrix.

  tokenforge evaluate --model train/task-2 --tokens tokens/test.parquet --split split/ --task 2 \
      --out evaluate/task-2.json

Predictions are restricted to the classes seen up to task t (class-incremental evaluation: the
model is not told which task a test image belongs to). Tasks not learned yet score near 0.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="a `tokenforge train` output directory")
    parser.add_argument("--tokens", type=Path, default=None, help="test token Parquet (models trained on tokens)")
    parser.add_argument("--shards", type=Path, default=None, help="WebDataset shard directory (models trained on pixels)")
    parser.add_argument("--split", type=Path, required=True, help="directory of task manifests")
    parser.add_argument("--task", type=int, required=True, help="the task the model was last trained on")
    parser.add_argument("--out", type=Path, required=True, help="output JSON with this row of the accuracy matrix")
    parser.add_argument("--batch-size", type=int, default=512, help="evaluation batch size")
    parser.add_argument(
        "--family",
        choices=("classification", "vqa", "captioning"),
        default="classification",
        help="vqa/captioning: answer every task's test questions or caption its images by greedy decoding, and score "
        "them (VQA accuracy; CIDEr-D and BLEU-4), one row of each score matrix",
    )
    parser.add_argument("--generate-tokens", type=int, default=None, help="vqa/captioning: most text ids generated (default: the model's text length)")


def run(args, tracker) -> None:
    from tokenforge.data.units import load_units
    from tokenforge.engine.evaluate import accuracy_row
    from tokenforge.models.vit import load_model
    from tokenforge.runtime import compute_device

    start = time.perf_counter()
    if args.family != "classification":
        return run_multimodal(args, tracker, start)
    tasks = read_json(args.split / "tasks.json")["tasks"]
    if not 0 <= args.task < len(tasks):
        raise TokenforgeError(f"--task {args.task}: the split has tasks 0..{len(tasks) - 1}")
    model = load_model(args.model).to(compute_device())  # a GPU where the job has one
    _, labels, units = load_units(model.config.input, args.tokens, args.shards, "test", model.config.patch)
    source = args.tokens if model.config.input == "tokens" else args.shards
    tracker.log_dataset(f"{source.parent.name}/{source.name}", source, "evaluation", {"samples": int(len(labels))})
    row = accuracy_row(model, units, labels, tasks, args.task, args.batch_size, source=source)
    row["wall_s"] = time.perf_counter() - start
    write_json(args.out, row)
    tracker.log_artifact(args.out)
    tracker.log_metrics({f"accuracy_task_{j}": a for j, a in enumerate(row["accuracy"])} | {"average_accuracy": row["average_accuracy"]})
    print(f"after task {args.task}: " + " ".join(f"{a:.3f}" for a in row["accuracy"]) + f" (average {row['average_accuracy']:.3f})")


def run_multimodal(args, tracker, start: float) -> None:
    from tokenforge.engine.multimodal import evaluate_row

    row = evaluate_row(args, tracker)
    row["wall_s"] = time.perf_counter() - start
    write_json(args.out, row)
    tracker.log_artifact(args.out)
    for name, values in row["scores"].items():
        tracker.log_metrics({f"{name}_task_{j}": v for j, v in enumerate(values)} | {f"average_{name}": row["average_scores"][name]})
    for name, values in row["scores"].items():
        print(f"after task {args.task}, {name}: " + " ".join(f"{a:.3f}" for a in values) + f" (average {row['average_scores'][name]:.3f})")
