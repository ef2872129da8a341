"""Where a text family's memory keeps its tokens on scenes (families/text_memory.py `named_object_stats`): the share
of a row's kept positions on the objects its question names, against those objects' share of the grid; and their
means over tasks in metrics.json (report/inputs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokenforge.continual.memory import Memory
from tokenforge.errors import TokenforgeError
from tokenforge.families.items import Items
from tokenforge.families.text_data import TextData
from tokenforge.families.text_memory import named_object_stats
from tokenforge.report.inputs import named_object_numbers

# One large object in the middle cell of a 3x3 grid (position 4), one in the top-left cell (position 0).
SCENE = [{"color": "red", "shape": "cube", "size": "large", "x": 0.17, "y": 0.17},
         {"color": "blue", "shape": "sphere", "size": "large", "x": 0.5, "y": 0.5}]  # fmt: skip
QA = [
    {"question": "what color is the cube?", "answers": ["red"], "family": "color", "objects": [0]},
    {"question": "how many spheres are there?", "answers": ["1"], "family": "count", "objects": [1]},
    {"question": "is the cube left of the sphere?", "answers": ["yes"], "family": "position", "objects": [0, 1]},
    {"question": "is there a cyan cone?", "answers": ["no"], "family": "exists", "objects": []},
]


def data(records: list[dict]) -> TextData:
    return TextData([f"img{i}" for i in range(len(records))], np.zeros((len(records), 3, 3), np.int64), records)


def items_of(records: list[dict]) -> Items:
    items = Items()
    for i, record in enumerate(records):
        for qa in record["qa"]:
            items.add(i, qa["question"], qa["answers"][0], qa["answers"], qa["family"])
    return items


def memory(items: Items, chosen: list[int], positions: list[list[int]], task: int, text: TextData) -> Memory:
    n = len(chosen)
    return Memory([f"{text.keys[items.image[j]]}#{j}" for j in chosen], np.zeros(n, np.int64), np.full(n, task, np.int64),
                  np.asarray(positions, np.int64), np.zeros((n, len(positions[0])), np.int64),
                  {"prompt": [items.prompt[j] for j in chosen], "target": [items.target[j] for j in chosen]})  # fmt: skip


def test_all_kept_on_the_named_object_is_one_none_is_zero():
    records = [{"dataset": "scenes", "qa": QA, "captions": [], "objects": [], "scene": SCENE}]
    text, items = data(records), items_of(records)
    on = memory(items, [0, 1], [[0, 0], [4, 4]], 3, text)  # (positions repeat: only their share counts)
    assert named_object_stats(on, items, text, 3) == {"named_object_share": 1.0, "named_object_area": 1 / 9,
                                                      "named_object_rows": 2}  # fmt: skip
    off = memory(items, [0, 1], [[4, 8], [0, 8]], 3, text)
    assert named_object_stats(off, items, text, 3)["named_object_share"] == 0.0
    # the position question names both objects (2 of 9 cells); the "no" question names none and is not counted
    both = memory(items, [2, 3], [[0, 1], [0, 4]], 3, text)
    assert named_object_stats(both, items, text, 3) == {"named_object_share": 0.5, "named_object_area": 2 / 9,
                                                        "named_object_rows": 1}  # fmt: skip
    # a coreset keeps whole grids: its share is the area
    whole = memory(items, [0, 2], [list(range(9))] * 2, 3, text)
    stats = named_object_stats(whole, items, text, 3)
    assert stats["named_object_share"] == pytest.approx(stats["named_object_area"]) == pytest.approx(1.5 / 9)


def test_only_this_tasks_rows_and_only_scenes_count():
    records = [{"dataset": "scenes", "qa": QA, "captions": [], "objects": [], "scene": SCENE}]
    text, items = data(records), items_of(records)
    old = memory(items, [0], [[4, 8]], 0, text)  # rows of an earlier task: their items are not this task's
    new = memory(items, [1], [[4, 5]], 1, text)
    assert named_object_stats(old.concat(new), items, text, 1) == {"named_object_share": 0.5, "named_object_area": 1 / 9,
                                                                   "named_object_rows": 1}  # fmt: skip
    # VQA v2 (no "scene", no "objects"), captions (the prompt is no question) and an empty memory: absent
    vqa2 = [{"dataset": "vqa2", "qa": [{k: v for k, v in qa.items() if k != "objects"} for qa in QA], "captions": [], "objects": []}]
    text2, items2 = data(vqa2), items_of(vqa2)
    assert named_object_stats(memory(items2, [0, 1], [[0, 4], [0, 4]], 0, text2), items2, text2, 0) == {}
    captions = Items()
    captions.add(0, "a picture of", "a red cube", ["a red cube"], "cube")
    assert named_object_stats(memory(captions, [0], [[0, 4]], 0, text), captions, text, 0) == {}
    assert named_object_stats(Memory.empty(), items, text, 0) == {}
    # a row that is not an item of this task is an error, not a silent miss
    stray = memory(items, [0], [[0, 4]], 1, text)
    stray.keys = ["img0#1"]
    with pytest.raises(TokenforgeError, match="img0#1"):
        named_object_stats(stray, items, text, 1)


def test_metrics_json_means_over_tasks():
    stats = {f"train-{t}": {"path": Path("x"), "data": {"wall_s": 1.0}} for t in range(3)}
    assert named_object_numbers(stats, 3) == {}
    stats["train-0"]["data"].update(named_object_share=0.5, named_object_area=0.1)
    stats["train-2"]["data"].update(named_object_share=0.3, named_object_area=0.2)
    numbers = named_object_numbers(stats, 3)
    assert numbers == {"named_object_share": pytest.approx(0.4), "named_object_area": pytest.approx(0.15)}
