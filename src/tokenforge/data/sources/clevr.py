"""The `clevr:PATH` source: CLEVR v1.0 questions and images.

PATH holds questions/CLEVR_{train,val}_questions.json and images/{train,val}/<image_filename>. Each image's text
record (format: tokenforge/data/multimodal.py) holds its questions with their one answer; a question's family
comes from its program's last function (color, shape, size, material, count, exists, compare, else the
function's name). train is the train split, val the test split (CLEVR's test questions have no answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenforge.data.multimodal import text_record
from tokenforge.data.sources.base import Source, SourceOptions, require_path
from tokenforge.data.sources.text import TextImages, dataset_root, json_int, json_items, json_str
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json


def open_clevr(path: str | None, options: SourceOptions) -> Source:
    """The `clevr:PATH` reader."""
    return clevr_source(require_path("clevr", path))


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
    root = dataset_root(path)
    images = TextImages(root)
    found = False
    for name, split in CLEVR_SPLITS:
        qpath = root / "questions" / f"CLEVR_{name}_questions.json"
        if not qpath.is_file():
            continue
        found = True
        per_image: dict[tuple[int, str], list[dict]] = {}
        for k, q in enumerate(json_items(read_json(qpath), "questions", qpath, "the file")):
            where = f"questions[{k}]"
            key = (json_int(q, "image_index", qpath, where), json_str(q, "image_filename", qpath, where))
            question = json_str(q, "question", qpath, where)
            if "answer" not in q:
                raise TokenforgeError(f"{qpath}: {where} has no answer (CLEVR test questions are unanswered)")
            answer = json_str(q, "answer", qpath, where)
            family = clevr_family(q.get("program"), qpath, where)
            per_image.setdefault(key, []).append({"question": question, "answers": [answer], "family": family})
        for key in sorted(per_image):
            images.add(f"images/{name}/{key[1]}", qpath, text_record("clevr", qa=per_image[key]), split)
    if not found:
        raise TokenforgeError(
            f"{root}: no CLEVR question files (expected questions/CLEVR_train_questions.json "
            "or questions/CLEVR_val_questions.json)"
        )
    return images.source(f"clevr:{path}", "clevr")
