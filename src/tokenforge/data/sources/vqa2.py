"""The `vqa2:PATH` source: VQA v2 questions and annotations with their COCO images.

PATH holds v2_OpenEnded_mscoco_{train,val}2014_questions.json, v2_mscoco_{train,val}2014_annotations.json and
the images {train,val}2014/COCO_{train,val}2014_<image_id:012d>.jpg. Each image's text record (format:
tokenforge/data/multimodal.py) holds its questions, each with the 10 annotators' answers and the annotation's
answer_type as its family ("yes/no", "number", "other"). train2014 is the train split, val2014 the test split.
"""

from __future__ import annotations

from pathlib import Path

from tokenforge.data.multimodal import text_record
from tokenforge.data.sources.base import Source, SourceOptions, require_path
from tokenforge.data.sources.text import TextImages, dataset_root, json_int, json_items, json_str
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json


def open_vqa2(path: str | None, options: SourceOptions) -> Source:
    """The `vqa2:PATH` reader."""
    return vqa2_source(require_path("vqa2", path))


VQA_SPLITS = (("train2014", "train"), ("val2014", "test"))


def vqa2_source(path: str) -> Source:
    """VQA v2 questions + annotations per COCO image, in image_id order; questions in file order."""
    root = dataset_root(path)
    images = TextImages(root)
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
        for k, q in enumerate(json_items(read_json(qpath), "questions", qpath, "the file")):
            where = f"questions[{k}]"
            qid, image_id = json_int(q, "question_id", qpath, where), json_int(q, "image_id", qpath, where)
            question = json_str(q, "question", qpath, where)
            if qid not in annotations:
                raise TokenforgeError(f"{apath}: no annotation for question_id {qid}")
            ann_image, family, answers = annotations[qid]
            if ann_image != image_id:
                raise TokenforgeError(
                    f"{apath}: question_id {qid} is about image_id {image_id} in {qpath.name}, not {ann_image}"
                )
            per_image.setdefault(image_id, []).append({"question": question, "answers": answers, "family": family})
        for image_id in sorted(per_image):
            images.add(f"{name}/COCO_{name}_{image_id:012d}.jpg", qpath, text_record("vqa2", qa=per_image[image_id]), split)
    if not found:
        raise TokenforgeError(
            f"{root}: no VQA v2 files (expected v2_OpenEnded_mscoco_train2014_questions.json and "
            "v2_mscoco_train2014_annotations.json, or the val2014 pair)"
        )
    return images.source(f"vqa2:{path}", "vqa2")


def _vqa_annotations(apath: Path) -> dict[int, tuple[int, str, list[str]]]:
    """{question_id: (image_id, answer_type, the annotators' answers)} of one annotations file."""
    out = {}
    for k, ann in enumerate(json_items(read_json(apath), "annotations", apath, "the file")):
        where = f"annotations[{k}]"
        qid, image_id = json_int(ann, "question_id", apath, where), json_int(ann, "image_id", apath, where)
        family = json_str(ann, "answer_type", apath, where)
        given = json_items(ann, "answers", apath, where)
        answers = [json_str(a, "answer", apath, f"{where}.answers[{j}]") for j, a in enumerate(given)]
        out[qid] = (image_id, family, answers)
    return out
