"""Where captioning memories keep their tokens: the per-item check of the memory test, after the fact.

config/experiments/captioning_memory.yaml ran before the training job counted, for a caption, the kept tokens on its
scene's objects (a scene's captions name every object in it; families/text_memory.py `named_objects`). This reads the
experiment's saved memories and counts it the same way, with the same function the training job now calls
(`named_object_stats`): for each variant and task t, the rows task t's memory file holds from task t, the mean share
of each row's kept positions on the cells its scene's objects cover (named_object_share) and those cells' share of
the grid (named_object_area: what randomly kept tokens get in expectation; a coreset's share equals it). The means
over the tasks, then mean ± std over seeds per group, as JSON and a Markdown table:

    .venv/bin/python benchmarks/caption_object_share.py            # reads results/captioning_memory (run it first)
    .venv/bin/python benchmarks/caption_object_share.py --experiment results/other_captioning_experiment

Writes benchmarks/results/caption-object-share.{json,md}. Seconds, on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def variant_shares(results: Path, variant: dict) -> dict | None:
    """named_object_share and named_object_area of one variant, means over its tasks; None without kept tokens."""
    from tokenforge.continual.memory import read_memory
    from tokenforge.families.items import task_items
    from tokenforge.families.multimodal import Captioning
    from tokenforge.families.text_data import load_text_data
    from tokenforge.families.text_memory import named_object_stats
    from tokenforge.io import read_json

    run = results / variant["dir"]  # the experiment's folder; its stages' folders are relative to the results root
    split = results.parent / variant["stages"]["split"] / "split"
    tokens = results.parent / variant["stages"]["tokens"]
    manifest = read_json(split / "tasks.json")
    family = Captioning(by=manifest["by"], caption_prompt=manifest.get("caption_prompt", "a picture of"))
    downsample = read_json(tokens / "tokenizer" / "config.json")["downsample"]
    data = load_text_data("tokens", tokens / "tokens" / "train.parquet", None, "train", downsample)
    found = []
    for t in range(len(manifest["tasks"])):
        memory = read_memory(run / "train" / f"task-{t}" / "memory.arrows.zst")
        if not len(memory):
            return None
        found.append(named_object_stats(memory, task_items(family, data.records, manifest, [t]), data, t))
    if not all(found):
        return None
    return {key: float(np.mean([f[key] for f in found])) for key in ("named_object_share", "named_object_area")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", type=Path, default=ROOT / "results" / "captioning_memory",
                        help="the captioning experiment's folder (its experiment.json and runs/)")
    parser.add_argument("--out", type=Path, default=RESULTS / "caption-object-share", help="output path without suffix")
    args = parser.parse_args(argv)
    described = args.experiment / "experiment.json"
    if not described.is_file():
        print(f"{described}: not found; run the experiment first (make run CONFIG=config/experiments/captioning_memory.yaml)",
              file=sys.stderr)
        return 2
    experiment = json.loads(described.read_text())
    groups: dict[str, list[dict]] = {}
    for variant in experiment["variants"]:
        shares = variant_shares(args.experiment, variant)
        if shares is not None:
            groups.setdefault(variant["group"], []).append({"seed": variant["seed"], **shares})
            print(f"{variant['name']}: {100 * shares['named_object_share']:.1f}% of kept tokens on the objects "
                  f"({100 * shares['named_object_area']:.1f}% of the grid)", file=sys.stderr)
    rows = []
    for group, found in groups.items():
        share, area = (np.array([f[k] for f in found]) for k in ("named_object_share", "named_object_area"))
        rows.append({"group": group, "seeds": [f["seed"] for f in found], "share_mean": float(share.mean()),
                     "share_std": float(share.std(ddof=1)) if len(found) > 1 else 0.0, "area_mean": float(area.mean())})
    out = {"experiment": experiment["experiment"], "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| memory | seeds | kept tokens on the objects (%) | objects' area (%) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['group']} | {len(r['seeds'])} | {100 * r['share_mean']:.1f} ± {100 * r['share_std']:.1f} | "
              f"{100 * r['area_mean']:.1f} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
