"""Split the classes into a class-incremental task sequence: one manifest per task.

  tokenforge split --classes shard/classes.json --out split/ --tasks 5 --seed 0

The class order is shuffled by --seed, or given with --order (class names or label numbers).
Each `task-<t>.json` lists that task's labels and class names; `tasks.json` lists all tasks.

  tokenforge split --family vqa --tokens tokens/train.parquet --by family --out split/ --tasks 5

The multimodal families (vqa, captioning) split the groups of their text instead of classes: question families
or datasets (vqa), objects (captioning), read from the train token file's text (tokenforge.families.multimodal).
A task's "class_names" are its groups. They also write `text/`, the word-level text tokenizer every later job
uses: trained here on the train split's questions, answers and captions (all tasks: the vocabulary is fixed
up front, as a pretrained tokenizer's is), or a copy of --text-tokenizer, a local tokenizer folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, read_json, write_json


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
    mm.add_argument("--family", choices=("classification", "vqa", "captioning"), default="classification", help="what the tasks learn")
    mm.add_argument("--tokens", type=Path, default=None, help="vqa/captioning: the train token Parquet (with its text column)")
    mm.add_argument(
        "--by", default=None, help="vqa: family (question families, the default) or dataset; captioning: object (the default)"
    )
    mm.add_argument("--caption-prompt", default="a picture of", help="captioning: the text every caption follows (BLIP's)")
    mm.add_argument("--text-tokenizer", type=Path, default=None, help="a local tokenizer folder to use instead of training one")


def run(args, tracker) -> None:
    from tokenforge.data.split import make_tasks, resolve_order

    if args.family != "classification":
        return run_multimodal(args, tracker)
    if args.classes is None:
        raise TokenforgeError("--classes: required for classification")
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


def run_multimodal(args, tracker) -> None:
    from tokenforge import families
    from tokenforge.data.split import make_tasks, resolve_order
    from tokenforge.data.tokens import load_tokens
    from tokenforge.families.text import load_text_tokenizer, train_word_tokenizer

    if args.tokens is None:
        raise TokenforgeError(f"--tokens: required for {args.family} (the train token file with its text)")
    by = args.by or ("family" if args.family == "vqa" else "object")
    family = families.get(args.family, by=by, caption_prompt=args.caption_prompt)
    records = load_tokens(args.tokens).texts
    if records is None:
        raise TokenforgeError(f"{args.tokens}: no text column; shard a text source (scenes, vqa2:, clevr:, coco-captions:)")
    groups = family.groups(records)
    order = resolve_order(groups, args.order, args.seed)
    tasks = make_tasks(groups, args.tasks, args.classes_per_task, order)
    manifests = [{"task": t, "classes": labels, "class_names": [groups[c] for c in labels]} for t, labels in enumerate(tasks)]
    with atomic_dir(args.out) as tmp:
        for manifest in manifests:
            write_json(tmp / f"task-{manifest['task']}.json", manifest)
        write_json(tmp / "tasks.json", {"family": args.family, "by": by, "caption_prompt": args.caption_prompt,
                                        "num_classes": len(groups), "tasks": manifests})  # fmt: skip
        if args.text_tokenizer is not None:
            load_text_tokenizer(args.text_tokenizer).save_pretrained(tmp / "text")
        else:
            train_word_tokenizer(family.texts(records), tmp / "text")
    tracker.log_params({"order": [groups[c] for t in tasks for c in t], "by": by})
    tracker.log_metrics({"tasks": len(tasks), "groups_per_task": len(tasks[0])})
    for m in manifests:
        print(f"task {m['task']}: {', '.join(m['class_names'])}")
