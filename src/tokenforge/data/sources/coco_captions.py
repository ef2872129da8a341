"""The `coco-captions:PATH` source: COCO captions (and object categories) with their images.

PATH holds annotations/captions_{train,val}2017.json (or the 2014 ones) and the images {train,val}2017/
<file_name>. Each image's text record (format: tokenforge/data/multimodal.py) holds its captions, stripped of
surrounding whitespace, and its object categories from annotations/instances_{train,val}2017.json if present.
train is the train split, val the test split.
"""

from __future__ import annotations

from pathlib import Path

from tokenforge.data.multimodal import text_record
from tokenforge.data.sources.base import Source, SourceOptions, require_path
from tokenforge.data.sources.text import TextImages, dataset_root, json_int, json_items, json_str
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json


def open_coco_captions(path: str | None, options: SourceOptions) -> Source:
    """The `coco-captions:PATH` reader."""
    return coco_captions_source(require_path("coco-captions", path))


COCO_SPLITS = (("train", "train"), ("val", "test"))
COCO_YEARS = ("2017", "2014")


def coco_captions_source(path: str) -> Source:
    """COCO images with their captions (file order) and object categories, in image id order."""
    root = dataset_root(path)
    folder = root / "annotations"
    year = next(
        (y for y in COCO_YEARS if any((folder / f"captions_{s}{y}.json").is_file() for s, _ in COCO_SPLITS)), None
    )
    if year is None:
        raise TokenforgeError(
            f"{folder}: no COCO caption files (expected captions_train2017.json or captions_val2017.json, "
            "or the 2014 ones)"
        )
    images = TextImages(root)
    for name, split in COCO_SPLITS:
        cpath = folder / f"captions_{name}{year}.json"
        if not cpath.is_file():
            continue
        data = read_json(cpath)
        file_names: dict[int, str] = {}
        for k, img in enumerate(json_items(data, "images", cpath, "the file")):
            image_id = json_int(img, "id", cpath, f"images[{k}]")
            if image_id in file_names:
                raise TokenforgeError(f"{cpath}: image id {image_id} is listed twice")
            file_names[image_id] = json_str(img, "file_name", cpath, f"images[{k}]")
        captions: dict[int, list[str]] = {image_id: [] for image_id in file_names}
        for k, ann in enumerate(json_items(data, "annotations", cpath, "the file")):
            where = f"annotations[{k}]"
            image_id = json_int(ann, "image_id", cpath, where)
            if image_id not in captions:
                raise TokenforgeError(f"{cpath}: {where} has image_id {image_id}, not among its images")
            captions[image_id].append(json_str(ann, "caption", cpath, where).strip())
        ipath = folder / f"instances_{name}{year}.json"
        objects = _coco_objects(ipath) if ipath.is_file() else {}
        for image_id in sorted(file_names):
            record = text_record("coco", captions=captions[image_id], objects=objects.get(image_id, []))
            images.add(f"{name}{year}/{file_names[image_id]}", cpath, record, split)
    return images.source(f"coco-captions:{path}", "coco")


def _coco_objects(ipath: Path) -> dict[int, list[str]]:
    """{image_id: sorted unique category names} of an instances file."""
    data = read_json(ipath)
    names = {}
    for k, cat in enumerate(json_items(data, "categories", ipath, "the file")):
        names[json_int(cat, "id", ipath, f"categories[{k}]")] = json_str(cat, "name", ipath, f"categories[{k}]")
    found: dict[int, set[str]] = {}
    for k, ann in enumerate(json_items(data, "annotations", ipath, "the file")):
        where = f"annotations[{k}]"
        image_id, category = json_int(ann, "image_id", ipath, where), json_int(ann, "category_id", ipath, where)
        if category not in names:
            raise TokenforgeError(f"{ipath}: {where} has category_id {category}, not among its categories")
        found.setdefault(image_id, set()).add(names[category])
    return {image_id: sorted(v) for image_id, v in found.items()}
