"""The scale benchmark's data: a seeded image folder of 100 procedural classes (benchmarks/scale.py).

    .venv/bin/python benchmarks/scale_images.py --per-class 100 --out /tmp/scale-images   # 10,000 images

Class c is one of 5 shapes (disc, square, triangle, ring, cross: c % 5) in one of 20 hues (c // 5); every image
draws it at a random place and size, with jittered saturation and value, over a random two-colour gradient, a
few distractor strokes and per-pixel noise, so a PNG does not shrink to nothing (about 9 KB at 64 px against
12 KB of raw pixels) and the tokenizer has something to learn. Image k of class c depends only on (seed, c, k):
a folder of N per class is the first N of a bigger one, so larger sizes extend it in place.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CLASSES = 100
SHAPES = ("disc", "square", "triangle", "ring", "cross")


def class_name(c: int) -> str:
    return f"c{c:03d}-{SHAPES[c % len(SHAPES)]}-h{c // len(SHAPES):02d}"


def draw(c: int, k: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """Image k of class c: (size, size, 3) uint8."""
    rng = np.random.default_rng([seed, c, k])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # background: a gradient between two random dark-to-mid colours along a random direction
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    a, b = rng.uniform(0, 160, 3), rng.uniform(0, 160, 3)
    img = a * (1 - t) + b * t
    # a few distractor strokes in random colours
    for _ in range(rng.integers(2, 5)):
        x0, y0, x1, y1 = rng.uniform(0, 1, 4)
        d = np.abs((y1 - y0) * xx - (x1 - x0) * yy + x1 * y0 - y1 * x0) / (np.hypot(x1 - x0, y1 - y0) + 1e-6)
        img[d < rng.uniform(0.008, 0.02)] = rng.uniform(0, 255, 3)
    # the class's shape in the class's hue
    hue = (c // len(SHAPES)) / (CLASSES // len(SHAPES))
    colour = 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)))
    cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.28)
    dx, dy = xx - cx, yy - cy
    shape = c % len(SHAPES)
    if shape == 0:
        mask = dx**2 + dy**2 < r**2
    elif shape == 1:
        mask = (np.abs(dx) < r * 0.85) & (np.abs(dy) < r * 0.85)
    elif shape == 2:
        mask = (dy < r * 0.7) & (dy > -r) & (np.abs(dx) < (dy + r) * 0.6)
    elif shape == 3:
        mask = (dx**2 + dy**2 < r**2) & (dx**2 + dy**2 > (0.55 * r) ** 2)
    else:
        mask = ((np.abs(dx) < r * 0.3) & (np.abs(dy) < r)) | ((np.abs(dy) < r * 0.3) & (np.abs(dx) < r))
    img[mask] = colour
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_class(job: tuple[Path, int, int, int, int]) -> int:
    from PIL import Image

    root, c, start, stop, seed = job
    folder = root / class_name(c)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(start, stop):
        Image.fromarray(draw(c, k, seed)).save(folder / f"{k:06d}.png", compress_level=1)
    return stop - start


def ensure_images(root: Path, per_class: int, seed: int = 0, workers: int | None = None) -> Path:
    """root/<class>/<k>.png for k < per_class in every class, writing only what is missing; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.json"
    have = json.loads(manifest.read_text()) if manifest.is_file() else {"seed": seed, "per_class": 0}
    if have["seed"] != seed:
        raise SystemExit(f"{root}: made with seed {have['seed']}, not {seed}; remove it or pick another --cache")
    if have["per_class"] < per_class:
        jobs = [(root, c, have["per_class"], per_class, seed) for c in range(CLASSES)]
        with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
            list(pool.map(_write_class, jobs))
        manifest.write_text(json.dumps({"seed": seed, "per_class": per_class}))
    return root


def linked_subset(master: Path, out: Path, per_class: int) -> Path:
    """out/<class>/ with hard links to the first per_class images of each class of master (made once)."""
    done = out / ".complete"
    if done.is_file() and done.read_text() == str(per_class):
        return out
    for c in range(CLASSES):
        (out / class_name(c)).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            src, dst = master / class_name(c) / f"{k:06d}.png", out / class_name(c) / f"{k:06d}.png"
            if not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:  # another file system: a copy
                    dst.write_bytes(src.read_bytes())
    done.write_text(str(per_class))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, required=True, help="images per class (100 classes)")
    parser.add_argument("--out", type=Path, required=True, help="the image folder (extended in place)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ensure_images(args.out, args.per_class, args.seed)


if __name__ == "__main__":
    main()
