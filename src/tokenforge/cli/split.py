"""Split the classes into a class-incremental task sequence: one manifest per task.

  tokenforge split --classes shard/classes.json --out split/ --tasks 5 --seed 0

The class order is shuffled by --seed, or given with --order (class names or label numbers).
Each `task-<t>.json` lists that task's labels and class names; `tasks.json` lists all tasks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, read_json, write_json


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


def run(args, tracker) -> None:
    from tokenforge.data.split import make_tasks, resolve_order

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
