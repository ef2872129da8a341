"""The objects a scene question names (each qa entry's "objects"), the token cells an object covers, and the
colour check of the tokenizer stage (tokenforge.data.sources.scenes)."""

from __future__ import annotations

import numpy as np
import pytest

from tokenforge.data.sources import scenes
from tokenforge.data.sources.scenes import (
    SCENE_COLORS,
    draw_scene,
    object_positions,
    scene_color_hits,
    scenes_source,
)


def obj(color: str, shape: str, size: str, x: float, y: float) -> dict:
    return {"color": color, "shape": shape, "size": size, "x": x, "y": y}


# Hand-built, left to right: two red cubes (one small, one large), a blue sphere, a small green cone.
SCENE = [
    obj("red", "cube", "small", 0.15, 0.15),
    obj("blue", "sphere", "large", 0.5, 0.5),
    obj("red", "cube", "large", 0.52, 0.85),
    obj("green", "cone", "small", 0.85, 0.2),
]


def asked(family: str, seeds=range(40)) -> list[tuple[str, str, list[int]]]:
    """What the family's question maker asks of SCENE under many draws."""
    made = [scenes._SCENE_QUESTIONS[family](SCENE, np.random.default_rng(s)) for s in seeds]
    return [m for m in made if m is not None]


def test_color_and_shape_questions_name_the_object_asked_about():
    for question, answer, named in asked("color"):
        (k,) = named
        words = question.removeprefix("what color is the ").rstrip("?").split()
        assert SCENE[k]["shape"] == words[-1] and answer == SCENE[k]["color"]
        assert len(words) == 1 or SCENE[k]["size"] == words[0]
    for question, answer, named in asked("shape"):
        (k,) = named
        words = question.removeprefix("what shape is the ").removesuffix(" object?").split()
        assert SCENE[k]["color"] == words[-1] and answer == SCENE[k]["shape"]


def test_count_exists_and_position_name_their_objects():
    counts = asked("count", range(80))
    assert {a for _, a, _ in counts} >= {"0", "1", "2"}
    for question, answer, named in counts:
        assert len(named) == int(answer) and named == sorted(set(named))
        what = question.split()[2]
        assert all(what in (SCENE[k]["color"], SCENE[k]["shape"] + "s") for k in named)
    for question, answer, named in asked("exists"):
        color, shape = question.removeprefix("is there a ").rstrip("?").split()
        assert named == [k for k, o in enumerate(SCENE) if (o["color"], o["shape"]) == (color, shape)]
        assert (answer == "yes") == bool(named)
    for question, answer, (a, b) in asked("position"):
        first, second = question.removeprefix("is the ").rstrip("?").split(" left of the ")
        assert scenes._describe(SCENE, a) == first and scenes._describe(SCENE, b) == second
        assert answer == ("yes" if SCENE[a]["x"] < SCENE[b]["x"] else "no")


def test_generated_records_name_objects_and_ask_each_question_once():
    for record in scenes_source(300, 16, seed=4).texts:
        questions = [qa["question"] for qa in record["qa"]]
        assert len(questions) == len(set(questions))  # a memory row finds its qa entry by its question
        for qa in record["qa"]:
            named = qa["objects"]
            assert all(0 <= k < len(record["scene"]) for k in named) and len(set(named)) == len(named)
            expected = {"color": 1, "shape": 1, "position": 2}.get(qa["family"])
            if expected is not None:
                assert len(named) == expected
            elif qa["family"] == "count":
                assert len(named) == int(qa["answers"][0])
            else:
                assert bool(named) == (qa["answers"] == ["yes"])


def test_object_positions():
    # a large object (half extent 0.15) at the centre of a 4x4 grid: the four middle cells, 0.6 x 0.6 of each
    assert object_positions(obj("red", "cube", "large", 0.5, 0.5), (4, 4)).tolist() == [5, 6, 9, 10]
    # on 3x3 it fits in the middle cell, spilling 0.05 of a cell width into its neighbours
    assert object_positions(obj("red", "cube", "large", 0.5, 0.5), (3, 3)).tolist() == [4]
    # a small one (half extent 0.095) at a corner of four cells covers 0.38 x 0.38 < 1/4 of each: its centre's cell
    assert object_positions(obj("red", "cube", "small", 0.25, 0.25), (4, 4)).tolist() == [5]
    # row-major on a non-square grid (2 rows of 4); an object at the image's corner
    assert object_positions(obj("red", "cube", "large", 0.25, 0.3), (2, 4)).tolist() == [0, 1]
    assert object_positions(obj("red", "cube", "large", 0.6, 0.75), (2, 4)).tolist() == [6]
    assert object_positions(obj("red", "cube", "small", 0.9, 0.9), (8, 8)).tolist() == [54, 55, 62, 63]
    assert object_positions(SCENE[0], (8, 8)).dtype == np.int64


def test_scene_color_hits_reads_the_drawn_colours_back():
    source = scenes_source(60, 24, seed=1)
    images = np.stack([np.asarray(source.image(i)) for i in range(len(source))]) / 255.0
    objects = sum(len(r["scene"]) for r in source.texts)
    right, total = scene_color_hits(source.texts, images)
    assert total == objects and right == objects
    grey, total = scene_color_hits(source.texts, np.full_like(images, 0.5))
    assert total == objects and grey / total < 0.3  # grey reads as "grey" only for the grey objects
    # a record without a scene (another source's) is skipped
    assert scene_color_hits([None, {"qa": []}], images[:2]) == (0, 0)


@pytest.mark.parametrize("color", sorted(SCENE_COLORS))
def test_scene_color_hits_every_colour_and_shape(color):
    scene = [obj(color, shape, "small", 0.15 + 0.33 * i, 0.5) for i, shape in enumerate(["cube", "sphere", "cone"])]
    scene.append(obj(color, "cylinder", "large", 0.5, 0.17))
    image = np.asarray(draw_scene(scene, 24))[None] / 255.0
    assert scene_color_hits([{"scene": scene}], image) == (4, 4)
