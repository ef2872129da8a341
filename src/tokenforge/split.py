"""Split the classes into a class-incremental task sequence: one manifest per task.

  tokenforge split --classes shard/classes.json --out split/ --tasks 5 --seed 0

The class order is shuffled by --seed, or given with --order (class names or label numbers).
Each `task-<t>.json` lists that task's labels and class names; `tasks.json` lists all tasks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .errors import TokenforgeError
from .io import atomic_dir, read_json, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=Path, required=True, help="classes.json written by `tokenforge shard`")
    parser.add_argument("--out", type=Path, required=True, help="output directory for task-<t>.json manifests")
    parser.add_argument("--tasks", type=int, default=5, help="number of tasks")
    parser.add_argument(
        "--classes-per-task",
        type=int,
        default=None,
        help="classes in each task (default: all classes divided evenly over the tasks)",
    )
    parser.add_argument(
        "--order", nargs="+", default=None, help="explicit class order (names or labels); default: shuffled by --seed"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the class-order shuffle")


def resolve_order(class_names: list[str], order: list[str] | None, seed: int) -> list[int]:
    """Labels in task order: the explicit order (names or label numbers) or a seeded shuffle."""
    if order is None:
        return [int(c) for c in np.random.default_rng(seed).permutation(len(class_names))]
    by_name = {name: i for i, name in enumerate(class_names)}
    labels = []
    for item in order:
        item = str(item)
        if item in by_name:
            label = by_name[item]
        elif item.lstrip("-").isdigit() and 0 <= int(item) < len(class_names):
            label = int(item)
        else:
            raise TokenforgeError(f"split.order: unknown class {item!r}; known: {', '.join(class_names[:20])}")
        if label in labels:
            raise TokenforgeError(f"split.order: class {item!r} is listed more than once")
        labels.append(label)
    return labels


def make_tasks(class_names: list[str], tasks: int, classes_per_task: int | None, order: list[int]) -> list[list[int]]:
    if tasks < 1:
        raise TokenforgeError(f"split.tasks: must be at least 1, got {tasks}")
    per_task = classes_per_task or len(order) // tasks
    if per_task < 1 or per_task * tasks > len(order):
        raise TokenforgeError(
            f"split: {tasks} tasks x {per_task} classes need {max(per_task, 1) * tasks} classes, "
            f"but {len(order)} are available"
        )
    return [order[t * per_task : (t + 1) * per_task] for t in range(tasks)]


def run(args, tracker) -> None:
    class_names = read_json(args.classes)
    if not isinstance(class_names, list) or not class_names:
        raise TokenforgeError(f"{args.classes}: expected a non-empty list of class names")
    order = resolve_order(class_names, args.order, args.seed)
    tasks = make_tasks(class_names, args.tasks, args.classes_per_task, order)
    manifests = [
        {"task": t, "classes": labels, "class_names": [class_names[c] for c in labels]}
        for t, labels in enumerate(tasks)
    ]
    with atomic_dir(args.out) as tmp:
        for manifest in manifests:
            write_json(tmp / f"task-{manifest['task']}.json", manifest)
        write_json(tmp / "tasks.json", {"num_classes": len(class_names), "tasks": manifests})
    tracker.log_params({"order": [c for t in tasks for c in t]})
    tracker.log_metrics({"tasks": len(tasks), "classes_per_task": len(tasks[0])})
    for m in manifests:
        print(f"task {m['task']}: {', '.join(m['class_names'])}")
