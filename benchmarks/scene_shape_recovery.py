"""Can an object's shape be read from the scene at all? A probe per scene size, on pixels and on tokens.

    .venv/bin/python benchmarks/scene_shape_recovery.py              # 24 and 48 px scenes (minutes on 1 core with
                                                                     # vqa_text_share's data made; about 6 more without)
    .venv/bin/python benchmarks/scene_shape_recovery.py --sizes 24 --out /tmp/look

The example VQA model answers shape questions no better than its blind control, however long it trains
(benchmarks/vqa_curves.py). Before more steps, a check of the input: is the shape there to be read? For each scene
size (--sizes; config/vqa.yaml's tokenizer with downsample 2, so 24 px -> 12x12 token grids, 48 px -> 24x24; the
data made once by the package's stages, shared with benchmarks/vqa_text_share.py), every object of every scene gives
one example: the window of token cells around its centre cell (half width: its largest half extent in cells, so the
window holds the whole object and some of its neighbourhood), as

- `pixels`: the image's pixels in that window;
- `reconstruction`: the same pixels of decode(encode(image)), what the tokens keep of them;
- `tokens`: the code ids in the window, one-hot: what a model on the tokens reads.

A small MLP (scikit-learn, seeded) learns each object's shape (4), colour (8) and size (2) from each input on the
train split's objects and is scored on the test split's. The majority class's share is the floor. A probe that
reads the shape from the pixels but not from the tokens says the tokenizer loses it; one that reads it from neither
says the scene is too small. Writes benchmarks/results/scene-shape-recovery.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vqa_curves import prepare  # noqa: E402  (shards, tokenizer and tokens of a scene set, made once)

TOKENIZER = dict(codebook=64, code_dim=16, hidden=64, downsample=2)  # config/vqa.yaml's tokenizer
TARGETS = ("shape", "color", "size")
INPUTS = ("pixels", "reconstruction", "tokens")


def examples(d: Path, split: str, half: int) -> dict:
    """Every object of the split's scenes: its windows (pixels, reconstruction, one-hot tokens) and its attributes."""
    import torch

    from tokenforge.data.shards import load_split
    from tokenforge.tokenizer.vq import load_tokenizer

    images = load_split(d / "shard", split)
    model = load_tokenizer(d / "tokenizer")
    with torch.no_grad():
        ids = model.encode(images.images).numpy()
        recon = (model.decode(torch.from_numpy(ids)).permute(0, 2, 3, 1).numpy() * 255).round()
    n, h, w = ids.shape
    cell = images.images.shape[1] // h
    codes = int(model.config["codebook_size"])
    pad_ids = np.pad(ids, ((0, 0), (half, half), (half, half)), constant_values=codes)  # codes: "outside the image"
    pad_px = [np.pad(a, ((0, 0), (half * cell, half * cell), (half * cell, half * cell), (0, 0)), mode="edge")
              for a in (images.images.astype(np.float32), recon.astype(np.float32))]  # fmt: skip
    out = {k: [] for k in (*INPUTS, *TARGETS)}
    for i, record in enumerate(images.texts):
        for obj in (record or {}).get("scene", []):
            r, c = min(int(obj["y"] * h), h - 1), min(int(obj["x"] * w), w - 1)  # its centre cell
            window = pad_ids[i, r : r + 2 * half + 1, c : c + 2 * half + 1]
            out["tokens"].append(np.eye(codes + 1, dtype=np.float32)[window].ravel())
            for name, px in zip(("pixels", "reconstruction"), pad_px):
                out[name].append(px[i, r * cell : (r + 2 * half + 1) * cell, c * cell : (c + 2 * half + 1) * cell].ravel() / 255.0)
            for key in TARGETS:
                out[key].append(obj[key])
    return {k: np.stack(v) if k in INPUTS else np.array(v) for k, v in out.items()}


def probe(train: dict, test: dict, inputs: str, target: str, seed: int) -> float:
    """Test accuracy of a seeded MLP reading `target` from `inputs`."""
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=400, random_state=seed)
    clf.fit(train[inputs], train[target])
    return float((clf.predict(test[inputs]) == test[target]).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 48], help="scene sizes in pixels")
    parser.add_argument("--scenes", type=int, default=600, help="scenes per size (config/vqa.yaml's 600)")
    parser.add_argument("--tokenizer-epochs", type=int, default=30, help="config/vqa.yaml's 30")
    parser.add_argument("--seed", type=int, default=0, help="the probes' seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "vqa_text_share", help="where the data are made")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scene-shape-recovery", help="output path without suffix")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from tokenforge.data.sources.scenes import SCENE_SIZES

    start, rows = time.perf_counter(), []
    for size in args.sizes:
        p = dict(TOKENIZER, scenes=args.scenes, size=size, tokenizer_epochs=args.tokenizer_epochs, threads=args.threads)
        d = prepare(args.work, p)
        grid = size // TOKENIZER["downsample"]
        half = math.ceil(max(SCENE_SIZES.values()) * grid)  # cells: the largest object fits in the window
        train, test = examples(d, "train", half), examples(d, "test", half)
        for target in TARGETS:
            values, counts = np.unique(train[target], return_counts=True)
            floor = float((test[target] == values[counts.argmax()]).mean())
            row = {"size": size, "grid": f"{grid}x{grid}", "window": 2 * half + 1, "target": target, "floor": floor,
                   "train_objects": len(train[target]), "test_objects": len(test[target])}  # fmt: skip
            row.update({name: probe(train, test, name, target, args.seed) for name in INPUTS})
            rows.append(row)
            print(f"{size} px, {target}: " + ", ".join(f"{k} {100 * row[k]:.1f}%" for k in (*INPUTS, "floor")), file=sys.stderr)
    result = {"benchmark": "scene_shape_recovery", "scenes": args.scenes, "tokenizer_epochs": args.tokenizer_epochs,
              "seed": args.seed, "rows": rows, "wall_s": time.perf_counter() - start, "machine": platform.processor() or platform.machine()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| scene | grid | window (cells) | reads | pixels | reconstruction | tokens | majority |", "|---|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} px | {r['grid']} | {r['window']} | {r['target']} | " + " | ".join(f"{100 * r[k]:.1f}%" for k in (*INPUTS, "floor")) + " |"
              for r in rows]  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
