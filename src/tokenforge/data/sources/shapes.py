"""The `shapes` source: seeded procedural RGB shapes, any count, class count and size.

Class c is a (kind, colour, style) triple (`shape_classes`); image i has label i % classes and is drawn from
`np.random.default_rng([seed, i])` alone, so an image does not depend on which others were drawn.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tokenforge.data.sources.base import SUPERSAMPLE, Source, SourceOptions, refuse_path
from tokenforge.errors import TokenforgeError

SHAPE_KINDS = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross", "ring", "half")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (35, 60, 220),
    "yellow": (235, 215, 30),
    "cyan": (30, 210, 220),
    "magenta": (210, 40, 200),
    "orange": (245, 135, 20),
    "purple": (115, 40, 160),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}
STYLES = ("", "outline", "striped")  # "" = filled, the plain name


def shape_classes(count: int) -> list[tuple[str, str, str]]:
    """The first `count` (kind, colour, style) classes.

    Class c takes kind c % K and colour (kind + c // K) % C, so even 10 classes differ in both
    shape and colour; after K*C classes the outline, then the striped variants follow.
    """
    colours = list(COLOURS)
    n_kinds, n_colours = len(SHAPE_KINDS), len(colours)
    out = []
    for c in range(count):
        kind = c % n_kinds
        colour = (kind + c // n_kinds) % n_colours
        style = c // (n_kinds * n_colours)
        out.append((SHAPE_KINDS[kind], colours[colour], STYLES[style]))
    return out


def max_shape_classes() -> int:
    return len(SHAPE_KINDS) * len(COLOURS) * len(STYLES)


def open_shapes(path: str | None, options: SourceOptions) -> Source:
    """The `shapes` reader: no PATH; count, classes and size from --shapes-*, the seed from --seed."""
    refuse_path("shapes", path)
    return shapes_source(options.shapes_count, options.shapes_classes, options.shapes_size, options.seed)


def shapes_source(count: int, classes: int, size: int, seed: int) -> Source:
    """Procedural shapes: image i has label i % classes and is drawn from rng([seed, i]) alone."""
    if count < 0:
        raise TokenforgeError(f"--shapes-count {count}: must be >= 0")
    if not 1 <= classes <= max_shape_classes():
        raise TokenforgeError(f"--shapes-classes {classes}: must be between 1 and {max_shape_classes()}")
    if size < 8:
        raise TokenforgeError(f"--shapes-size {size}: must be >= 8 pixels")
    specs = shape_classes(classes)
    names = ["-".join(p for p in (colour, kind, style) if p) for kind, colour, style in specs]
    labels = np.arange(count, dtype=np.int64) % classes

    def load(i: int) -> Image.Image:
        kind, colour, style = specs[int(labels[i])]
        return draw_shape(kind, COLOURS[colour], style, size, np.random.default_rng([seed, i]))

    return Source(
        spec="shapes",
        class_names=names,
        mode="RGB",
        labels=labels,
        ids=[f"shapes/{seed}/{i}" for i in range(count)],
        splits=None,
        load=load,
    )


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of radius r around (cx, cy), rotated by angle."""
    if kind == "star":
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        angles = [k * math.pi / 5 for k in range(10)]
    elif kind == "cross":
        w = 0.33 * r  # half arm width
        quarter = [(w, r), (w, w), (r, w)]  # one arm tip and the inner corner, turned 4 times
        pts = [(x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, -1), (-1, 0), (0, 1)) for x, y in quarter]
        radii = [math.hypot(x, y) for x, y in pts]
        angles = [math.atan2(y, x) for x, y in pts]
    elif kind == "diamond":  # a rhombus 1 : 0.6, so that it is not a rotated square
        radii, angles = [r, 0.6 * r, r, 0.6 * r], [0, math.pi / 2, math.pi, 3 * math.pi / 2]
    elif kind == "half":  # half disc
        angles = [math.pi * k / 16 for k in range(17)]
        radii = [r] * 17
    else:
        sides = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[kind]
        angles = [2 * math.pi * k / sides for k in range(sides)]
        radii = [r] * sides
    return [(cx + rr * math.cos(a + angle), cy + rr * math.sin(a + angle)) for rr, a in zip(radii, angles)]


def _shape_mask(kind: str, style: str, big: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """A supersampled float mask in [0, 1] of one shape in the given style."""
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if kind in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if kind == "ring":
            q = 0.55 * r
            draw.ellipse((cx - q, cy - q, cx + q, cy + q), fill=0)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    if style == "outline":
        # outline = shape minus its erosion; the line width (1-2 output pixels) grows with the
        # shape, staying thin enough that a ring's outline keeps a gap (ring width is 0.45 r)
        width = max(2, int(round(0.14 * r)))
        eroded = mask.filter(ImageFilter.MinFilter(2 * width + 1))
        return (np.asarray(mask, dtype=np.float32) - np.asarray(eroded, dtype=np.float32)) / 255.0
    m = np.asarray(mask, dtype=np.float32) / 255.0
    if style == "striped":
        # stripes 2 output pixels wide, at an angle tied to the shape's rotation
        yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        m = m * (np.floor(t / (2 * SUPERSAMPLE)) % 2 == 0)
    return m


def draw_shape(kind: str, rgb: tuple[int, int, int], style: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Render one shape on a tinted, noisy background; every random choice comes from rng."""
    big = size * SUPERSAMPLE
    r = rng.uniform(0.22, 0.40) * big
    cx, cy = rng.uniform(r, big - r, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    grey = rng.uniform(70, 185)
    background = np.clip(grey + rng.uniform(-25, 25, size=3), 0, 255)
    colour = np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-20, 20, size=3), 0, 255)
    mask = _shape_mask(kind, style, big, cx, cy, r, angle)
    # box-downsample the mask to the output size: the mean over each SUPERSAMPLE^2 block
    alpha = mask.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    img = background * (1 - alpha) + colour * alpha + rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))
