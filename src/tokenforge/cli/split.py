"""Split what the tasks learn into a task sequence: one manifest per task.

  tokenforge split --classes shard/classes.json --out split/ --tasks 5 --seed 0
  tokenforge split --family vqa --tokens tokens/train.parquet --by family --out split/ --tasks 5

The family (--family, tokenforge.families) gives the names the sequence is cut from: classification the shard's
class names; vqa and captioning the groups of their text, question families or datasets (vqa), objects
(captioning), read from the train token file's text (tokenforge.families.multimodal), and they also write
`text/`, the word-level text tokenizer every later job uses. The order is shuffled by --seed, or given with
--order (names or numbers). Each `task-<t>.json` lists that task's numbers ("classes") and names
("class_names"); `tasks.json` lists all tasks, with the family's own fields.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenforge.families import FAMILIES
from tokenforge.io import atomic_dir, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", type=Path, default=None, help="classes.json written by `tokenforge shard` (classification)")
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
    mm = parser.add_argument_group("vqa and captioning")
    mm.add_argument("--family", choices=FAMILIES, default="classification", help="what the tasks learn")
    mm.add_argument("--tokens", type=Path, default=None, help="vqa/captioning: the train token Parquet (with its text column)")
    mm.add_argument(
        "--by", default=None, help="vqa: family (question families, the default) or dataset; captioning: object (the default)"
    )
    mm.add_argument("--caption-prompt", default="a picture of", help="captioning: the text every caption follows (BLIP's)")
    mm.add_argument("--text-tokenizer", type=Path, default=None, help="a local tokenizer folder to use instead of training one")


def run(args, tracker) -> None:
    from tokenforge.data.split import make_tasks, resolve_order
    from tokenforge.runtime import job_resources

    plan = FAMILIES.load(args.family).split(args)
    names = plan.names
    order = resolve_order(names, args.order, args.seed)
    tasks = make_tasks(names, args.tasks, args.classes_per_task, order)
    manifests = [{"task": t, "classes": labels, "class_names": [names[c] for c in labels]} for t, labels in enumerate(tasks)]
    with atomic_dir(args.out) as tmp:
        for manifest in manifests:
            write_json(tmp / f"task-{manifest['task']}.json", manifest)
        write_json(tmp / "tasks.json", {**plan.fields, "num_classes": len(names), "tasks": manifests})
        if plan.write is not None:
            plan.write(tmp)
        write_json(tmp / "stats.json", {"resources": job_resources()})  # the job's own peak RSS and CPU seconds
    ordered = [c for t in tasks for c in t]
    tracker.log_params({"order": [names[c] for c in ordered] if plan.logged_by_name else ordered} | plan.params)
    tracker.log_metrics({"tasks": len(tasks), plan.per_task_metric: len(tasks[0])})
    for m in manifests:
        print(f"task {m['task']}: {', '.join(m['class_names'])}")
