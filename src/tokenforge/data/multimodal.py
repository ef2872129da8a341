"""The text record that every image of a text-bearing source carries (the multimodal half: sequential VQA and
captioning), a plain JSON-able dict:

    {"dataset": "scenes" | "vqa2" | "clevr" | "coco",
     "qa": [{"question": str, "answers": [str, ...], "family": str[, "objects": [int, ...]]}, ...],
     "captions": [str, ...],
     "objects": [str, ...]}

Parts a dataset does not have are empty lists (a VQA image has captions []). `answers` holds VQA v2's 10
annotator answers, one answer for CLEVR and scenes. `objects` are the sorted, unique object names in the image
(scenes: shape names, COCO: category names of instances_*.json, VQA v2 and CLEVR: []). Scenes records also
have "scene": one {"color", "shape", "size", "x", "y"} per object, left to right, x and y the object's centre
as a fraction of the image side (0..1, 4 decimals); the image is drawn from exactly these values. A scenes qa
entry also has "objects": the indices into "scene" of the objects its question names (color, shape: the one
asked about; count: every object counted, [] for 0; exists: the objects of that colour and shape, [] for "no";
position: the two, in the question's order). The key is optional: other datasets' qa entries lack it.

The sources that make these records are in tokenforge/data/sources/: scenes.py, vqa2.py, clevr.py and
coco_captions.py (and join.py, which joins sources into one). The shard stage stores a record in each sample's
JSON under "text" (tokenforge/data/shards.py), the token files in their `text` column (tokenforge/data/tokens.py),
and the multimodal families read it back (tokenforge/families/multimodal.py).
"""

from __future__ import annotations

DATASETS = ("scenes", "vqa2", "clevr", "coco")  # the values of a record's "dataset"


def text_record(
    dataset: str, qa: list[dict] | None = None, captions: list[str] | None = None, objects: list[str] | None = None
) -> dict:
    """One image's text record; missing parts are empty lists."""
    return {"dataset": dataset, "qa": qa or [], "captions": captions or [], "objects": objects or []}
