"""The `scenes` source: seeded procedural CLEVR-like scenes, each with questions and captions.

A scene is 2-6 coloured cubes, spheres, cylinders and cones on a plain background, in distinct cells of a 3x3
grid (so they never overlap); its text record (format: tokenforge/data/multimodal.py) has one question per
family where one can be asked (color, shape, count, exists, position) and two captions. Scene i (its objects,
questions and captions) comes from `np.random.default_rng([seed, i])` alone. The source has no split of its
own (the shard stage splits it by seed); every image has label 0, class "scenes".

Each qa entry also lists the objects its question names ("objects": indices into "scene"); `object_positions`
gives the token cells an object covers (what a memory's kept tokens are checked against), and
`scene_color_hits` whether the objects' colours can be read back from (reconstructed) images.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tokenforge.data.multimodal import text_record
from tokenforge.data.sources.base import SUPERSAMPLE, Source, SourceOptions, refuse_path
from tokenforge.errors import TokenforgeError

SCENE_COLORS = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 205, 40),
    "purple": (130, 50, 170),
    "cyan": (40, 200, 210),
    "grey": (110, 110, 110),
    "brown": (125, 75, 35),
}
SCENE_SHAPES = ("cube", "sphere", "cylinder", "cone")  # drawn as square, disc, capped tall box, triangle
SCENE_SIZES = {"small": 0.095, "large": 0.15}  # half extent, as a fraction of the image side
SCENE_BACKGROUND = (214, 210, 200)
SCENE_GRID = 3  # objects sit in distinct cells of a 3x3 grid, so they never overlap
MAX_SCENE_OBJECTS = SCENE_GRID * SCENE_GRID
LEFT_OF_MARGIN = 1 / (2 * SCENE_GRID)  # position questions only for objects this far apart in x
QA_FAMILIES = ("color", "shape", "count", "exists", "position")
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def open_scenes(path: str | None, options: SourceOptions) -> Source:
    """The `scenes` reader: no PATH; count and size from --scenes-*, the seed from --seed."""
    refuse_path("scenes", path)
    return scenes_source(options.scenes_count, options.scenes_size, options.seed)


def scenes_source(count: int, size: int, seed: int, min_objects: int = 2, max_objects: int = 6) -> Source:
    """Procedural scenes: scene i (its objects, questions and captions) comes from rng([seed, i]) alone.

    The records are made up front (cheap); images are drawn on demand from each record's "scene".
    """
    if count < 0:
        raise TokenforgeError(f"--scenes-count {count}: must be >= 0")
    if size < 8:
        raise TokenforgeError(f"--scenes-size {size}: must be >= 8 pixels")
    if not 1 <= min_objects <= max_objects <= MAX_SCENE_OBJECTS:
        raise TokenforgeError(
            f"scenes: objects per image {min_objects}..{max_objects}: need 1 <= min <= max <= {MAX_SCENE_OBJECTS}"
        )
    records = [scene_record(np.random.default_rng([seed, i]), min_objects, max_objects) for i in range(count)]
    return Source(
        spec="scenes",
        class_names=["scenes"],
        mode="RGB",
        labels=np.zeros(count, dtype=np.int64),
        ids=[f"scenes/{seed}/{i}" for i in range(count)],
        splits=None,
        load=lambda i: draw_scene(records[i]["scene"], size),
        texts=records,
    )


def scene_layout(rng: np.random.Generator, min_objects: int, max_objects: int) -> list[dict]:
    """2..6 objects in distinct grid cells, jittered inside their cell, sorted left to right (then top down)."""
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(MAX_SCENE_OBJECTS, size=n, replace=False)
    colors, sizes = list(SCENE_COLORS), list(SCENE_SIZES)
    objects = []
    for cell in cells.tolist():
        color = colors[int(rng.integers(len(colors)))]
        shape = SCENE_SHAPES[int(rng.integers(len(SCENE_SHAPES)))]
        size = sizes[int(rng.integers(len(sizes)))]
        half, cell_side = SCENE_SIZES[size], 1 / SCENE_GRID
        row, col = divmod(cell, SCENE_GRID)
        x = col * cell_side + rng.uniform(half, cell_side - half)
        y = row * cell_side + rng.uniform(half, cell_side - half)
        objects.append({"color": color, "shape": shape, "size": size, "x": round(x, 4), "y": round(y, 4)})
    return sorted(objects, key=lambda o: (o["x"], o["y"]))


def scene_record(rng: np.random.Generator, min_objects: int = 2, max_objects: int = 6) -> dict:
    """A scene's text record: its objects ("scene"), one question per family where one can be asked, captions."""
    objects = scene_layout(rng, min_objects, max_objects)
    qa = []
    for family in QA_FAMILIES:
        asked = _SCENE_QUESTIONS[family](objects, rng)
        if asked is not None:
            question, answer, named = asked
            qa.append({"question": question, "answers": [answer], "family": family, "objects": named})
    record = text_record("scenes", qa, scene_captions(objects), sorted({o["shape"] for o in objects}))
    record["scene"] = objects
    return record


def draw_scene(objects: list[dict], size: int) -> Image.Image:
    """Draw the objects flat-coloured on the plain background at 4x, then box-downsample to size x size."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), SCENE_BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        cx, cy = obj["x"] * big, obj["y"] * big
        r = SCENE_SIZES[obj["size"]] * big
        fill = SCENE_COLORS[obj["color"]]
        if obj["shape"] == "cube":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj["shape"] == "sphere":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj["shape"] == "cylinder":  # narrower than a cube, rounded top and bottom
            w, cap = 0.7 * r, 0.3 * r
            draw.rectangle((cx - w, cy - r + cap, cx + w, cy + r - cap), fill=fill)
            draw.ellipse((cx - w, cy - r, cx + w, cy - r + 2 * cap), fill=fill)
            draw.ellipse((cx - w, cy + r - 2 * cap, cx + w, cy + r), fill=fill)
        else:  # cone: a triangle standing on its base
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return img.reduce(SUPERSAMPLE)


def object_positions(obj: dict, grid: tuple[int, int]) -> np.ndarray:
    """The row-major positions (ascending, int64) of the cells of an (h, w) token grid over the whole image that an
    object covers: its extent is its drawn bounding square, centre ± SCENE_SIZES half extent (every shape lies
    inside it); a cell counts when that square covers more than a quarter of the cell's area, and the cell holding
    the centre always counts (a small object at a corner of four coarse cells covers none of them by a quarter).
    Works in fractions of the image side, so it holds at any image size whose patch tiles it."""
    h, w = grid
    half = SCENE_SIZES[obj["size"]]

    def overlap(centre: float, n: int) -> np.ndarray:  # (n,): the square's overlap with each cell, in cell widths
        lo, hi = (centre - half) * n, (centre + half) * n
        edges = np.arange(n, dtype=np.float64)
        return np.clip(np.minimum(hi, edges + 1) - np.maximum(lo, edges), 0.0, None)

    covered = np.outer(overlap(obj["y"], h), overlap(obj["x"], w)) > 0.25
    covered[min(int(obj["y"] * h), h - 1), min(int(obj["x"] * w), w - 1)] = True
    return np.flatnonzero(covered).astype(np.int64)


INTERIOR = 0.4  # the colour check reads an object within this share of its half extent of its centre (below)


def scene_color_hits(records: list[dict | None], images: np.ndarray) -> tuple[int, int]:
    """(objects whose colour is read back right, objects) over the scenes of `records` in `images` (float
    (N, H, W, 3) in [0, 1], image i drawn from records[i]; records without a "scene" are skipped).

    An object's colour is read as the mean colour of the pixels whose centres lie within INTERIOR x its half
    extent of its centre (a disc inside every drawn shape: the cone's sides pass 0.447 half extents from its
    centre), or of the pixel holding its centre when none do, classified as the nearest SCENE_COLORS colour
    (RGB distance)."""
    palette = np.asarray(list(SCENE_COLORS.values()), dtype=np.float64) / 255.0
    names = list(SCENE_COLORS)
    right = total = 0
    for record, image in zip(records, images):
        image = np.asarray(image, dtype=np.float64)
        height, width = image.shape[:2]
        ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
        for obj in (record or {}).get("scene", []):
            radius = INTERIOR * SCENE_SIZES[obj["size"]]
            inside = (ys[:, None] - obj["y"]) ** 2 + (xs[None, :] - obj["x"]) ** 2 <= radius**2
            if not inside.any():
                inside[min(int(obj["y"] * height), height - 1), min(int(obj["x"] * width), width - 1)] = True
            mean = image[inside].mean(axis=0)
            nearest = int(np.argmin(((palette - mean) ** 2).sum(axis=1)))
            right, total = right + (names[nearest] == obj["color"]), total + 1
    return right, total


def _matching(objects: list[dict], **attrs: str) -> list[int]:
    return [k for k, o in enumerate(objects) if all(o[a] == v for a, v in attrs.items())]


def _unique(objects: list[dict], *attrs: str) -> list[int]:
    """Indices of the objects that are the only one with their values of `attrs`."""
    return [k for k, o in enumerate(objects) if len(_matching(objects, **{a: o[a] for a in attrs})) == 1]


def _describe(objects: list[dict], k: int) -> str | None:
    """The shortest description that picks out object k alone ("cube", "red cube", "large red cube"), or None."""
    for attrs in (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")):
        if k in _unique(objects, *attrs):
            return " ".join(objects[k][a] for a in attrs)
    return None


def _pick(rng: np.random.Generator, items: list) -> Any:
    return items[int(rng.integers(len(items)))]


# A question maker returns (question, answer, the indices of the objects it names) or None (none can be asked).
Asked = tuple[str, str, list[int]]


def _color_question(objects: list[dict], rng: np.random.Generator) -> Asked | None:
    for attrs in (("size", "shape"), ("shape",)):
        candidates = _unique(objects, *attrs)
        if candidates:
            k = _pick(rng, candidates)
            o = objects[k]
            return f"what color is the {' '.join(o[a] for a in attrs)}?", o["color"], [k]
    return None


def _shape_question(objects: list[dict], rng: np.random.Generator) -> Asked | None:
    for attrs in (("color",), ("size", "color")):
        candidates = _unique(objects, *attrs)
        if candidates:
            k = _pick(rng, candidates)
            o = objects[k]
            return f"what shape is the {' '.join(o[a] for a in attrs)} object?", o["shape"], [k]
    return None


def _count_question(objects: list[dict], rng: np.random.Generator) -> Asked:
    """How many of a colour or shape: 3 in 4 times one that is present, else any (so "0" occurs too)."""
    attr = "color" if rng.random() < 0.5 else "shape"
    values = list(SCENE_COLORS) if attr == "color" else list(SCENE_SHAPES)
    present = [v for v in values if any(o[attr] == v for o in objects)]
    value = _pick(rng, present) if rng.random() < 0.75 else _pick(rng, values)
    question = f"how many {value} objects are there?" if attr == "color" else f"how many {value}s are there?"
    counted = _matching(objects, **{attr: value})
    return question, str(len(counted)), counted


def _exists_question(objects: list[dict], rng: np.random.Generator) -> Asked:
    """Is there a <color> <shape>: "yes" half the time (an object's pair; it names every object of that pair),
    else a pair that is absent (it names none)."""
    if rng.random() < 0.5:
        o = _pick(rng, objects)
        return f"is there a {o['color']} {o['shape']}?", "yes", _matching(objects, color=o["color"], shape=o["shape"])
    absent = [(c, s) for c in SCENE_COLORS for s in SCENE_SHAPES if not _matching(objects, color=c, shape=s)]
    color, shape = _pick(rng, absent)
    return f"is there a {color} {shape}?", "no", []


def _position_question(objects: list[dict], rng: np.random.Generator) -> Asked | None:
    """Is the <A> left of the <B>, for two uniquely described objects in different grid columns."""
    names = [_describe(objects, k) for k in range(len(objects))]
    pairs = [
        (a, b)
        for a in range(len(objects))
        for b in range(a + 1, len(objects))
        if names[a] and names[b] and abs(objects[a]["x"] - objects[b]["x"]) >= LEFT_OF_MARGIN
    ]
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    if rng.random() < 0.5:
        a, b = b, a
    answer = "yes" if objects[a]["x"] < objects[b]["x"] else "no"
    return f"is the {names[a]} left of the {names[b]}?", answer, [a, b]


_SCENE_QUESTIONS = {
    "color": _color_question,
    "shape": _shape_question,
    "count": _count_question,
    "exists": _exists_question,
    "position": _position_question,
}


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def scene_captions(objects: list[dict]) -> list[str]:
    """Two captions: the objects left to right ("a large red cube and a small blue sphere"), and the counts of
    each shape ("three objects: two cubes and a sphere")."""
    listing = _and([f"a {o['size']} {o['color']} {o['shape']}" for o in objects])
    shapes = Counter(o["shape"] for o in objects)
    counts = [
        f"a {s}" if shapes[s] == 1 else f"{NUMBER_WORDS[shapes[s]]} {s}s" for s in SCENE_SHAPES if shapes[s]
    ]
    n = len(objects)
    return [listing, f"{NUMBER_WORDS[n]} object{'s' if n != 1 else ''}: {_and(counts)}"]
