"""Text-bearing image sources for the multimodal half (sequential VQA and captioning).

Every image of these sources carries one text record, a plain JSON-able dict:

    {"dataset": "scenes" | "vqa2" | "clevr" | "coco",
     "qa": [{"question": str, "answers": [str, ...], "family": str}, ...],
     "captions": [str, ...],
     "objects": [str, ...]}

Parts a dataset does not have are empty lists (a VQA image has captions []). `answers` holds VQA v2's 10
annotator answers, one answer for CLEVR and scenes. `objects` are the sorted, unique object names in the image
(scenes: shape names, COCO: category names of instances_*.json, VQA v2 and CLEVR: []). Scenes records also
have "scene": one {"color", "shape", "size", "x", "y"} per object, left to right, x and y the object's centre
as a fraction of the image side (0..1, 4 decimals); the image is drawn from exactly these values.

    scenes              seeded procedural CLEVR-like scenes: 2-6 coloured cubes, spheres, cylinders and cones
                        on a plain background; QA families color, shape, count, exists, position; 2 captions
    vqa2:PATH           VQA v2: v2_OpenEnded_mscoco_{train,val}2014_questions.json, v2_mscoco_{train,val}2014_
                        annotations.json, images {train,val}2014/COCO_{train,val}2014_<image_id:012d>.jpg;
                        family = the annotation's answer_type ("yes/no", "number", "other")
    clevr:PATH          CLEVR v1.0: questions/CLEVR_{train,val}_questions.json, images/{train,val}/<image_filename>;
                        family from the program's last function (color, shape, size, material, count, exists,
                        compare, else the function's name)
    coco-captions:PATH  COCO captions: annotations/captions_{train,val}2017.json (or 2014), images
                        {train,val}2017/<file_name>; objects from annotations/instances_{train,val}2017.json if
                        present (captions are stripped of surrounding whitespace)

The readers keep the datasets' own split (train -> "train", val -> "test"; a split whose files are absent is
skipped, none at all is an error); scenes has none (the shard stage splits it by seed). Every image gets
label 0 and class_names [dataset]. `join_sources` makes one source of several (a VQA sequence by dataset,
`vqa2:/a+clevr:/b`): label k and class name k belong to the k-th source. Images are read lazily, as RGB;
every file is checked to exist when the source is opened. All bad input is a one-line TokenforgeError
naming the file.
"""

from __future__ import annotations

import bisect
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tokenforge.data.sources import SUPERSAMPLE, Source, read_image
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json

DATASETS = ("scenes", "vqa2", "clevr", "coco")


def text_record(
    dataset: str, qa: list[dict] | None = None, captions: list[str] | None = None, objects: list[str] | None = None
) -> dict:
    """One image's text record; missing parts are empty lists."""
    return {"dataset": dataset, "qa": qa or [], "captions": captions or [], "objects": objects or []}


def _text_source(spec: str, dataset: str, records: list[dict], files: list[Path], ids: list[str], splits) -> Source:
    """A source of image files on disk, one text record each, all with label 0 (class `dataset`)."""

    def load(i: int) -> Image.Image:
        img = read_image(files[i])
        return img if img.mode == "RGB" else img.convert("RGB")

    return Source(
        spec=spec,
        class_names=[dataset],
        mode="RGB",
        labels=np.zeros(len(records), dtype=np.int64),
        ids=ids,
        splits=splits,
        load=load,
        texts=records,
    )


# --- scenes -----------------------------------------------------------------------------------

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
        pair = _SCENE_QUESTIONS[family](objects, rng)
        if pair is not None:
            qa.append({"question": pair[0], "answers": [pair[1]], "family": family})
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


def _color_question(objects: list[dict], rng: np.random.Generator) -> tuple[str, str] | None:
    for attrs in (("size", "shape"), ("shape",)):
        candidates = _unique(objects, *attrs)
        if candidates:
            o = objects[_pick(rng, candidates)]
            return f"what color is the {' '.join(o[a] for a in attrs)}?", o["color"]
    return None


def _shape_question(objects: list[dict], rng: np.random.Generator) -> tuple[str, str] | None:
    for attrs in (("color",), ("size", "color")):
        candidates = _unique(objects, *attrs)
        if candidates:
            o = objects[_pick(rng, candidates)]
            return f"what shape is the {' '.join(o[a] for a in attrs)} object?", o["shape"]
    return None


def _count_question(objects: list[dict], rng: np.random.Generator) -> tuple[str, str]:
    """How many of a colour or shape: 3 in 4 times one that is present, else any (so "0" occurs too)."""
    attr = "color" if rng.random() < 0.5 else "shape"
    values = list(SCENE_COLORS) if attr == "color" else list(SCENE_SHAPES)
    present = [v for v in values if any(o[attr] == v for o in objects)]
    value = _pick(rng, present) if rng.random() < 0.75 else _pick(rng, values)
    question = f"how many {value} objects are there?" if attr == "color" else f"how many {value}s are there?"
    return question, str(len(_matching(objects, **{attr: value})))


def _exists_question(objects: list[dict], rng: np.random.Generator) -> tuple[str, str]:
    """Is there a <color> <shape>: "yes" half the time (an object's pair), else a pair that is absent."""
    if rng.random() < 0.5:
        o = _pick(rng, objects)
        return f"is there a {o['color']} {o['shape']}?", "yes"
    absent = [(c, s) for c in SCENE_COLORS for s in SCENE_SHAPES if not _matching(objects, color=c, shape=s)]
    color, shape = _pick(rng, absent)
    return f"is there a {color} {shape}?", "no"


def _position_question(objects: list[dict], rng: np.random.Generator) -> tuple[str, str] | None:
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
    return f"is the {names[a]} left of the {names[b]}?", "yes" if objects[a]["x"] < objects[b]["x"] else "no"


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


# --- JSON helpers -----------------------------------------------------------------------------


def _root(path: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise TokenforgeError(f"{root}: no such directory")
    return root


def _items(container: Any, key: str, path: Path, where: str) -> list[dict]:
    """container[key] as a list of JSON objects, else an error naming the file."""
    items = container.get(key) if isinstance(container, dict) else None
    if not isinstance(items, list):
        raise TokenforgeError(f"{path}: {where} has no {key!r} list")
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise TokenforgeError(f"{path}: {key}[{k}] is not a JSON object")
    return items


def _int(item: dict, key: str, path: Path, where: str) -> int:
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenforgeError(f"{path}: {where} has no integer {key!r}")
    return value


def _str(item: dict, key: str, path: Path, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise TokenforgeError(f"{path}: {where} has no string {key!r}")
    return value


def _image_file(file: Path, listed_in: Path) -> Path:
    if not file.is_file():
        raise TokenforgeError(f"{file}: image not found (listed in {listed_in})")
    return file


# --- VQA v2 -----------------------------------------------------------------------------------

VQA_SPLITS = (("train2014", "train"), ("val2014", "test"))


def vqa2_source(path: str) -> Source:
    """VQA v2 questions + annotations per COCO image, in image_id order; questions in file order."""
    root = _root(path)
    records: list[dict] = []
    files: list[Path] = []
    ids: list[str] = []
    splits: list[str] = []
    found = False
    for name, split in VQA_SPLITS:
        qpath = root / f"v2_OpenEnded_mscoco_{name}_questions.json"
        apath = root / f"v2_mscoco_{name}_annotations.json"
        if not qpath.is_file() and not apath.is_file():
            continue
        found = True
        for need, other in ((qpath, apath), (apath, qpath)):
            if not need.is_file():
                raise TokenforgeError(f"{need}: no such file (needed with {other.name})")
        annotations = _vqa_annotations(apath)
        per_image: dict[int, list[dict]] = {}
        for k, q in enumerate(_items(read_json(qpath), "questions", qpath, "the file")):
            where = f"questions[{k}]"
            qid, image_id = _int(q, "question_id", qpath, where), _int(q, "image_id", qpath, where)
            question = _str(q, "question", qpath, where)
            if qid not in annotations:
                raise TokenforgeError(f"{apath}: no annotation for question_id {qid}")
            ann_image, family, answers = annotations[qid]
            if ann_image != image_id:
                raise TokenforgeError(
                    f"{apath}: question_id {qid} is about image_id {image_id} in {qpath.name}, not {ann_image}"
                )
            per_image.setdefault(image_id, []).append({"question": question, "answers": answers, "family": family})
        for image_id in sorted(per_image):
            rel = f"{name}/COCO_{name}_{image_id:012d}.jpg"
            files.append(_image_file(root / rel, qpath))
            records.append(text_record("vqa2", qa=per_image[image_id]))
            ids.append(rel)
            splits.append(split)
    if not found:
        raise TokenforgeError(
            f"{root}: no VQA v2 files (expected v2_OpenEnded_mscoco_train2014_questions.json and "
            "v2_mscoco_train2014_annotations.json, or the val2014 pair)"
        )
    return _text_source(f"vqa2:{path}", "vqa2", records, files, ids, splits)


def _vqa_annotations(apath: Path) -> dict[int, tuple[int, str, list[str]]]:
    """{question_id: (image_id, answer_type, the annotators' answers)} of one annotations file."""
    out = {}
    for k, ann in enumerate(_items(read_json(apath), "annotations", apath, "the file")):
        where = f"annotations[{k}]"
        qid, image_id = _int(ann, "question_id", apath, where), _int(ann, "image_id", apath, where)
        family = _str(ann, "answer_type", apath, where)
        given = _items(ann, "answers", apath, where)
        answers = [_str(a, "answer", apath, f"{where}.answers[{j}]") for j, a in enumerate(given)]
        out[qid] = (image_id, family, answers)
    return out


# --- CLEVR ------------------------------------------------------------------------------------

CLEVR_SPLITS = (("train", "train"), ("val", "test"))
CLEVR_FAMILIES = {
    "query_color": "color",
    "query_shape": "shape",
    "query_size": "size",
    "query_material": "material",
    "count": "count",
    "exist": "exists",
    "greater_than": "compare",
    "less_than": "compare",
}


def clevr_family(program: Any, path: Path, where: str) -> str:
    """The question family named by the program's last function ("function" in v1.0, "type" in later files)."""
    last = program[-1] if isinstance(program, list) and program else None
    name = last.get("function", last.get("type")) if isinstance(last, dict) else None
    if not isinstance(name, str):
        raise TokenforgeError(f"{path}: {where} has no program ending in a function")
    if name.startswith("equal_"):
        return "compare"
    return CLEVR_FAMILIES.get(name, name)


def clevr_source(path: str) -> Source:
    """CLEVR questions grouped per image, in image_index order; questions in file order."""
    root = _root(path)
    records: list[dict] = []
    files: list[Path] = []
    ids: list[str] = []
    splits: list[str] = []
    found = False
    for name, split in CLEVR_SPLITS:
        qpath = root / "questions" / f"CLEVR_{name}_questions.json"
        if not qpath.is_file():
            continue
        found = True
        per_image: dict[tuple[int, str], list[dict]] = {}
        for k, q in enumerate(_items(read_json(qpath), "questions", qpath, "the file")):
            where = f"questions[{k}]"
            key = (_int(q, "image_index", qpath, where), _str(q, "image_filename", qpath, where))
            question = _str(q, "question", qpath, where)
            if "answer" not in q:
                raise TokenforgeError(f"{qpath}: {where} has no answer (CLEVR test questions are unanswered)")
            answer = _str(q, "answer", qpath, where)
            family = clevr_family(q.get("program"), qpath, where)
            per_image.setdefault(key, []).append({"question": question, "answers": [answer], "family": family})
        for key in sorted(per_image):
            rel = f"images/{name}/{key[1]}"
            files.append(_image_file(root / rel, qpath))
            records.append(text_record("clevr", qa=per_image[key]))
            ids.append(rel)
            splits.append(split)
    if not found:
        raise TokenforgeError(
            f"{root}: no CLEVR question files (expected questions/CLEVR_train_questions.json "
            "or questions/CLEVR_val_questions.json)"
        )
    return _text_source(f"clevr:{path}", "clevr", records, files, ids, splits)


# --- COCO captions ----------------------------------------------------------------------------

COCO_SPLITS = (("train", "train"), ("val", "test"))
COCO_YEARS = ("2017", "2014")


def coco_captions_source(path: str) -> Source:
    """COCO images with their captions (file order) and object categories, in image id order."""
    root = _root(path)
    folder = root / "annotations"
    year = next(
        (y for y in COCO_YEARS if any((folder / f"captions_{s}{y}.json").is_file() for s, _ in COCO_SPLITS)), None
    )
    if year is None:
        raise TokenforgeError(
            f"{folder}: no COCO caption files (expected captions_train2017.json or captions_val2017.json, "
            "or the 2014 ones)"
        )
    records: list[dict] = []
    files: list[Path] = []
    ids: list[str] = []
    splits: list[str] = []
    for name, split in COCO_SPLITS:
        cpath = folder / f"captions_{name}{year}.json"
        if not cpath.is_file():
            continue
        data = read_json(cpath)
        file_names: dict[int, str] = {}
        for k, img in enumerate(_items(data, "images", cpath, "the file")):
            image_id = _int(img, "id", cpath, f"images[{k}]")
            if image_id in file_names:
                raise TokenforgeError(f"{cpath}: image id {image_id} is listed twice")
            file_names[image_id] = _str(img, "file_name", cpath, f"images[{k}]")
        captions: dict[int, list[str]] = {image_id: [] for image_id in file_names}
        for k, ann in enumerate(_items(data, "annotations", cpath, "the file")):
            where = f"annotations[{k}]"
            image_id = _int(ann, "image_id", cpath, where)
            if image_id not in captions:
                raise TokenforgeError(f"{cpath}: {where} has image_id {image_id}, not among its images")
            captions[image_id].append(_str(ann, "caption", cpath, where).strip())
        ipath = folder / f"instances_{name}{year}.json"
        objects = _coco_objects(ipath) if ipath.is_file() else {}
        for image_id in sorted(file_names):
            rel = f"{name}{year}/{file_names[image_id]}"
            files.append(_image_file(root / rel, cpath))
            records.append(text_record("coco", captions=captions[image_id], objects=objects.get(image_id, [])))
            ids.append(rel)
            splits.append(split)
    return _text_source(f"coco-captions:{path}", "coco", records, files, ids, splits)


def _coco_objects(ipath: Path) -> dict[int, list[str]]:
    """{image_id: sorted unique category names} of an instances file."""
    data = read_json(ipath)
    names = {}
    for k, cat in enumerate(_items(data, "categories", ipath, "the file")):
        names[_int(cat, "id", ipath, f"categories[{k}]")] = _str(cat, "name", ipath, f"categories[{k}]")
    found: dict[int, set[str]] = {}
    for k, ann in enumerate(_items(data, "annotations", ipath, "the file")):
        where = f"annotations[{k}]"
        image_id, category = _int(ann, "image_id", ipath, where), _int(ann, "category_id", ipath, where)
        if category not in names:
            raise TokenforgeError(f"{ipath}: {where} has category_id {category}, not among its categories")
        found.setdefault(image_id, set()).add(names[category])
    return {image_id: sorted(v) for image_id, v in found.items()}


# --- join -------------------------------------------------------------------------------------


def dataset_name(source: Source) -> str:
    """A text source's dataset (its one class), else the kind of its spec ("cifar", "shapes")."""
    if source.texts is not None and len(source.class_names) == 1:
        return source.class_names[0]
    return source.spec.partition(":")[0]


def join_sources(sources: list[Source]) -> Source:
    """Several sources as one, in order: label k and class name k for the k-th (its own labels are dropped).

    Class names are the dataset names, "-2", "-3" appended to repeats (vqa2, vqa2-2); ids are
    "<class name>/<id>". Mode is RGB if any source is RGB (images are converted). The sources must agree on
    splits (all have their own train/test split, or none has) and on text (all have records, or none has);
    otherwise it is an error, as a joined split by seed would mix per-dataset splits.
    """
    if not sources:
        raise TokenforgeError("join: no sources to join")
    spec = "+".join(s.spec for s in sources)
    bases = [dataset_name(s) for s in sources]
    names = [f"{base}-{bases[:k].count(base) + 1}" if base in bases[:k] else base for k, base in enumerate(bases)]
    for attr, what in (("splits", "its own train/test split"), ("texts", "text records")):
        has = [getattr(s, attr) is not None for s in sources]
        if any(has) and not all(has):
            yes, no = names[has.index(True)], names[has.index(False)]
            raise TokenforgeError(
                f"source {spec!r}: {yes} has {what} but {no} has none; join sources that all have or all lack it"
            )
    mode = "RGB" if any(s.mode == "RGB" for s in sources) else sources[0].mode
    starts = np.cumsum([0] + [len(s) for s in sources[:-1]]).tolist()

    def load(i: int) -> Image.Image:
        part = bisect.bisect_right(starts, i) - 1
        img = sources[part].image(i - starts[part])
        return img if img.mode == mode else img.convert(mode)

    return Source(
        spec=spec,
        class_names=names,
        mode=mode,
        labels=np.concatenate([np.full(len(s), k, dtype=np.int64) for k, s in enumerate(sources)]),
        ids=[f"{name}/{i}" for name, s in zip(names, sources) for i in s.ids],
        splits=None if sources[0].splits is None else [x for s in sources for x in s.splits],
        load=load,
        texts=None if sources[0].texts is None else [t for s in sources for t in s.texts],
    )
