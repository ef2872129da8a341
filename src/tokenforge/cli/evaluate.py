r"""Evaluate the model after task t on every task's test set: one row of the score matrices.

  tokenforge evaluate --model train/task-2 --tokens tokens/test.parquet --split split/ --task 2 \
      --out evaluate/task-2.json

The family (--family, tokenforge.families) says how: classification restricts predictions to the classes seen up
to task t (class-incremental evaluation: the model is not told which task a test image belongs to), so tasks not
learned yet score near 0; vqa and captioning answer every task's test questions or caption its images by greedy
decoding and score them (VQA accuracy; CIDEr-D and BLEU-4).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tokenforge.families import FAMILIES
from tokenforge.io import write_json
from tokenforge.runtime import job_resources


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
        choices=FAMILIES,
        default="classification",
        help="what the model learnt (the train job's --family); vqa/captioning: one row of each score matrix",
    )
    parser.add_argument("--generate-tokens", type=int, default=None, help="vqa/captioning: most text ids generated (default: the model's text length)")


def run(args, tracker) -> None:
    start = time.perf_counter()
    row, scores = FAMILIES.load(args.family).evaluate(args, tracker)
    row["wall_s"] = time.perf_counter() - start
    row["resources"] = job_resources()  # peak RSS and CPU seconds of the whole job, at its end
    write_json(args.out, row)
    tracker.log_artifact(args.out)
    for name, (values, average) in scores.items():
        tracker.log_metrics({f"{name}_task_{j}": v for j, v in enumerate(values)} | {f"average_{name}": average})
        print(f"after task {args.task}, {name}: " + " ".join(f"{a:.3f}" for a in values) + f" (average {average:.3f})")
