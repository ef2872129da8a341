"""Tests of the text-bearing sources: procedural scenes, tiny VQA v2 / CLEVR / COCO captions layouts, joins."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenforge.data.sources import first_per_class, join_sources, open_source
from tokenforge.data.sources.clevr import clevr_source
from tokenforge.data.sources.coco_captions import coco_captions_source
from tokenforge.data.sources.scenes import SCENE_COLORS, SCENE_SHAPES, SCENE_SIZES, scenes_source
from tokenforge.data.sources.vqa2 import vqa2_source
from tokenforge.errors import TokenforgeError

RECORD_KEYS = {"dataset", "qa", "captions", "objects"}


def pixels(source, i: int) -> bytes:
    return np.asarray(source.image(i)).tobytes()


# --- scenes -----------------------------------------------------------------------------------


def test_scenes_deterministic():
    a, b = scenes_source(12, 32, seed=5), scenes_source(12, 32, seed=5)
    assert a.texts == b.texts and a.ids == b.ids
    # an image depends on its index alone, not on which images were drawn before
    assert [pixels(a, i) for i in range(12)] == [pixels(b, i) for i in reversed(range(12))][::-1]
    c = scenes_source(12, 32, seed=6)
    assert c.texts != a.texts
    assert sum(pixels(a, i) != pixels(c, i) for i in range(12)) >= 10
    # scene i does not depend on the count
    assert scenes_source(3, 32, seed=5).texts == a.texts[:3]


def test_scenes_source_fields():
    source = open_source("scenes", seed=1, scenes_count=7, scenes_size=16)
    assert source.spec == "scenes" and source.class_names == ["scenes"] and source.mode == "RGB"
    assert source.labels.tolist() == [0] * 7 and source.splits is None and len(source.texts) == 7
    assert source.ids == [f"scenes/1/{i}" for i in range(7)]
    for record in source.texts:
        assert set(record) == RECORD_KEYS | {"scene"} and record["dataset"] == "scenes"
        assert 2 <= len(record["scene"]) <= 6
        assert record["objects"] == sorted({o["shape"] for o in record["scene"]})
        assert json.loads(json.dumps(record)) == record  # plain JSON
    sub = first_per_class(source, 3)
    assert sub.texts == source.texts[:3]
    assert source.subset([4, 2]).texts == [source.texts[4], source.texts[2]]


def _find(scene: list[dict], words: list[str]) -> list[dict]:
    """The objects matching a description such as ["small", "red", "cube"]."""
    attr = {**{c: "color" for c in SCENE_COLORS}, **{s: "shape" for s in SCENE_SHAPES}}
    attr.update({s: "size" for s in SCENE_SIZES})
    return [o for o in scene if all(o[attr[w]] == w for w in words)]


def _check_answer(scene: list[dict], qa: dict) -> None:
    """Recompute the answer of one question from the scene's objects."""
    q, (answer,) = qa["question"], qa["answers"]
    words = q.rstrip("?").split()
    family = qa["family"]
    if family == "color":  # what color is the <size> <shape>?
        (obj,) = _find(scene, words[4:])
        assert answer == obj["color"]
    elif family == "shape":  # what shape is the <color> object?
        (obj,) = _find(scene, words[4:-1])
        assert answer == obj["shape"]
    elif family == "count":  # how many red objects / cubes are there?
        what = words[2] if words[3] == "objects" else words[2].removesuffix("s")
        assert answer == str(len(_find(scene, [what]))) and answer.isdigit()
    elif family == "exists":  # is there a <color> <shape>?
        assert answer == ("yes" if _find(scene, words[3:5]) else "no")
    elif family == "position":  # is the <A> left of the <B>?
        split = words.index("left")
        (a,) = _find(scene, words[2:split])
        (b,) = _find(scene, words[split + 3 :])
        assert answer == ("yes" if a["x"] < b["x"] else "no")
        assert abs(a["x"] - b["x"]) > 0.1
    else:
        raise AssertionError(f"unknown family {family}")


def test_scenes_questions_and_captions():
    source = scenes_source(60, 32, seed=0)
    families = Counter()
    for record in source.texts:
        scene = record["scene"]
        assert scene == sorted(scene, key=lambda o: (o["x"], o["y"]))
        for qa in record["qa"]:
            _check_answer(scene, qa)
        seen = [qa["family"] for qa in record["qa"]]
        assert len(seen) == len(set(seen)) and {"count", "exists"} <= set(seen)
        families.update(seen)
        listing = ", ".join(f"a {o['size']} {o['color']} {o['shape']}" for o in scene)
        assert record["captions"][0].replace(" and ", ", ") == listing
        assert record["captions"][1].split(" ")[1].startswith("object")
    assert set(families) == {"color", "shape", "count", "exists", "position"}
    assert all(n >= 40 for n in families.values()), families


def test_scenes_hand_checked():
    record = scenes_source(1, 32, seed=0).texts[0]
    # seed 0, scene 0: six objects, left to right
    assert [(o["size"], o["color"], o["shape"]) for o in record["scene"]] == [
        ("large", "cyan", "cube"),
        ("large", "purple", "cylinder"),
        ("large", "cyan", "sphere"),
        ("large", "purple", "cube"),
        ("large", "red", "sphere"),
        ("small", "yellow", "cube"),
    ]
    qa = {q["family"]: (q["question"], q["answers"]) for q in record["qa"]}
    assert qa["color"] == ("what color is the small cube?", ["yellow"])
    assert qa["count"] == ("how many cylinders are there?", ["1"])
    assert record["captions"][1] == "six objects: three cubes, two spheres and a cylinder"


def test_scenes_answer_balance():
    qa = [q for r in scenes_source(300, 16, seed=2).texts for q in r["qa"]]
    exists = Counter(q["answers"][0] for q in qa if q["family"] == "exists")
    assert 0.4 < exists["yes"] / 300 < 0.6
    position = Counter(q["answers"][0] for q in qa if q["family"] == "position")
    assert 0.4 < position["yes"] / sum(position.values()) < 0.6
    counts = Counter(q["answers"][0] for q in qa if q["family"] == "count")
    assert "0" in counts and set(counts) <= {str(k) for k in range(7)}


@pytest.mark.parametrize("size", [16, 32, 64])
def test_scenes_sizes(size):
    source = scenes_source(6, size, seed=3)
    for i in range(6):
        img = source.image(i)
        assert img.size == (size, size) and img.mode == "RGB"
        array = np.asarray(img)
        assert len(np.unique(array.reshape(-1, 3), axis=0)) > 2  # not a blank background
        if size == 64:  # the pixel under each object's centre has the object's colour
            for obj in source.texts[i]["scene"]:
                x, y = int(obj["x"] * size), int(obj["y"] * size)
                assert tuple(array[y, x]) == SCENE_COLORS[obj["color"]], obj


def test_scenes_bad_options():
    with pytest.raises(TokenforgeError, match="--scenes-count -1: must be >= 0"):
        scenes_source(-1, 32, 0)
    with pytest.raises(TokenforgeError, match="--scenes-size 4: must be >= 8"):
        scenes_source(3, 4, 0)
    with pytest.raises(TokenforgeError, match="objects per image 3..2"):
        scenes_source(3, 32, 0, min_objects=3, max_objects=2)
    assert len(scenes_source(0, 32, 0)) == 0


# --- fake dataset layouts -----------------------------------------------------------------------


def write_image(path: Path, size=(20, 14), mode="RGB", seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


VQA_ANSWERS = ["yes"] * 8 + ["no", "maybe"]


def fake_vqa2(root: Path, splits=("train2014", "val2014")) -> Path:
    """Train: image 42 (2 questions) and image 7 (1, a grey JPEG); val: image 3 (1 question)."""
    questions = {
        "train2014": [(420, 42, "is it red?", "yes/no"), (70, 7, "how many cats?", "number"),
                      (421, 42, "what is it?", "other")],
        "val2014": [(30, 3, "is this a dog?", "yes/no")],
    }
    for k, name in enumerate(splits):
        rows = questions[name]
        write_json(root / f"v2_OpenEnded_mscoco_{name}_questions.json", {
            "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": name,
            "questions": [{"image_id": i, "question": q, "question_id": qid} for qid, i, q, _ in rows],
        })
        annotations = [
            {"question_id": qid, "image_id": i, "answer_type": family, "question_type": "is the",
             "multiple_choice_answer": "yes",
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in
                         enumerate(VQA_ANSWERS if family == "yes/no" else [f"{qid}-{j}" for j in range(10)])]}
            for qid, i, q, family in reversed(rows)
        ]
        write_json(root / f"v2_mscoco_{name}_annotations.json", {"info": {}, "annotations": annotations})
        for image_id in sorted({i for _, i, _, _ in rows}):
            mode = "L" if image_id == 7 else "RGB"
            write_image(root / name / f"COCO_{name}_{image_id:012d}.jpg", (16 + image_id % 5, 12), mode, seed=k)
    return root


def test_vqa2_records(tmp_path):
    root = fake_vqa2(tmp_path / "vqa")
    source = open_source(f"vqa2:{root}")
    assert source.spec == f"vqa2:{root}" and source.class_names == ["vqa2"] and source.mode == "RGB"
    assert source.ids == [
        "train2014/COCO_train2014_000000000007.jpg",
        "train2014/COCO_train2014_000000000042.jpg",
        "val2014/COCO_val2014_000000000003.jpg",
    ]
    assert source.splits == ["train", "train", "test"] and source.labels.tolist() == [0, 0, 0]
    assert source.texts[0] == {
        "dataset": "vqa2",
        "qa": [{"question": "how many cats?", "answers": [f"70-{j}" for j in range(10)], "family": "number"}],
        "captions": [],
        "objects": [],
    }
    assert source.texts[1]["qa"] == [
        {"question": "is it red?", "answers": VQA_ANSWERS, "family": "yes/no"},
        {"question": "what is it?", "answers": [f"421-{j}" for j in range(10)], "family": "other"},
    ]
    assert source.texts[2]["qa"][0]["question"] == "is this a dog?"
    img = source.image(0)  # a grey JPEG, read as RGB at its own size
    assert img.mode == "RGB" and img.size == (18, 12)


def test_vqa2_one_split(tmp_path):
    root = fake_vqa2(tmp_path / "vqa", splits=("val2014",))
    source = vqa2_source(str(root))
    assert source.splits == ["test"] and len(source.texts) == 1


def test_vqa2_errors(tmp_path):
    with pytest.raises(TokenforgeError, match="no such directory"):
        vqa2_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenforgeError, match="no VQA v2 files"):
        vqa2_source(str(tmp_path / "empty"))
    with pytest.raises(TokenforgeError, match="missing PATH"):
        open_source("vqa2")

    root = fake_vqa2(tmp_path / "a")
    image = root / "val2014" / "COCO_val2014_000000000003.jpg"
    image.unlink()
    with pytest.raises(TokenforgeError) as err:
        vqa2_source(str(root))
    assert str(err.value).startswith(f"{image}: image not found")

    root = fake_vqa2(tmp_path / "b")
    apath = root / "v2_mscoco_train2014_annotations.json"
    data = json.loads(apath.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["question_id"] != 70]
    apath.write_text(json.dumps(data))
    with pytest.raises(TokenforgeError) as err:
        vqa2_source(str(root))
    assert str(err.value) == f"{apath}: no annotation for question_id 70"

    root = fake_vqa2(tmp_path / "c")
    qpath = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    qpath.write_text('{"questions": [')
    with pytest.raises(TokenforgeError) as err:
        vqa2_source(str(root))
    assert str(err.value).startswith(f"{qpath}: not valid JSON") and "\n" not in str(err.value)

    root = fake_vqa2(tmp_path / "d")
    apath = root / "v2_mscoco_val2014_annotations.json"
    apath.unlink()
    with pytest.raises(TokenforgeError, match=f"{apath}: no such file"):
        vqa2_source(str(root))

    root = fake_vqa2(tmp_path / "e")
    qpath = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    qpath.write_text(json.dumps({"questions": [{"image_id": 3, "question_id": 30}]}))
    with pytest.raises(TokenforgeError, match="has no string 'question'"):
        vqa2_source(str(root))


def fake_clevr(root: Path) -> Path:
    """Train: CLEVR_train_000000.png (2 questions), CLEVR_train_000001.png (1); val: one image, one question."""
    train = [
        (1, "How many cubes?", "3", [{"function": "scene"}, {"function": "filter_shape"}, {"function": "count"}]),
        (0, "What color is the ball?", "red", [{"type": "scene"}, {"type": "query_color"}]),
        (0, "Same size?", "no", [{"function": "scene"}, {"function": "equal_size"}]),
    ]
    val = [(0, "Is there a sphere?", "yes", [{"function": "scene"}, {"function": "exist"}])]
    for name, rows in (("train", train), ("val", val)):
        questions = [
            {"image_index": i, "image_filename": f"CLEVR_{name}_{i:06d}.png", "question": q, "answer": a,
             "program": p, "split": name, "question_family_index": 0}
            for i, q, a, p in rows
        ]
        write_json(root / "questions" / f"CLEVR_{name}_questions.json", {"info": {}, "questions": questions})
        for i in sorted({i for i, *_ in rows}):
            write_image(root / "images" / name / f"CLEVR_{name}_{i:06d}.png", (24, 16))
    return root


def test_clevr_records(tmp_path):
    root = fake_clevr(tmp_path / "clevr")
    source = open_source(f"clevr:{root}")
    assert source.class_names == ["clevr"] and source.splits == ["train", "train", "test"]
    assert source.ids == [
        "images/train/CLEVR_train_000000.png",
        "images/train/CLEVR_train_000001.png",
        "images/val/CLEVR_val_000000.png",
    ]
    assert source.texts[0]["qa"] == [
        {"question": "What color is the ball?", "answers": ["red"], "family": "color"},
        {"question": "Same size?", "answers": ["no"], "family": "compare"},
    ]
    assert source.texts[1]["qa"][0]["family"] == "count" and source.texts[2]["qa"][0]["family"] == "exists"
    assert source.texts[2] == {"dataset": "clevr", "qa": source.texts[2]["qa"], "captions": [], "objects": []}
    assert source.image(2).size == (24, 16) and source.image(2).mode == "RGB"


def test_clevr_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenforgeError, match="no CLEVR question files"):
        clevr_source(str(tmp_path / "empty"))

    root = fake_clevr(tmp_path / "a")
    qpath = root / "questions" / "CLEVR_val_questions.json"
    data = json.loads(qpath.read_text())
    del data["questions"][0]["answer"]
    qpath.write_text(json.dumps(data))
    with pytest.raises(TokenforgeError) as err:
        clevr_source(str(root))
    assert str(err.value).startswith(f"{qpath}: questions[0] has no answer")

    root = fake_clevr(tmp_path / "b")
    image = root / "images" / "train" / "CLEVR_train_000001.png"
    image.unlink()
    with pytest.raises(TokenforgeError) as err:
        clevr_source(str(root))
    assert str(err.value).startswith(f"{image}: image not found")

    root = fake_clevr(tmp_path / "c")
    qpath = root / "questions" / "CLEVR_train_questions.json"
    qpath.write_text("not json")
    with pytest.raises(TokenforgeError) as err:
        clevr_source(str(root))
    assert str(err.value).startswith(f"{qpath}: not valid JSON")

    qpath.write_text(json.dumps({"questions": [{"image_index": 0, "image_filename": "x.png", "question": "?",
                                                "answer": "1", "program": []}]}))
    with pytest.raises(TokenforgeError, match=f"{qpath}: questions\\[0\\] has no program"):
        clevr_source(str(root))


def fake_coco(root: Path, year: str = "2017", instances: bool = True) -> Path:
    """Train: images 5 and 9 (9 without instances); val: image 2. Captions out of order on purpose."""
    images = {"train": [(9, 20, 12), (5, 16, 16)], "val": [(2, 12, 18)]}
    captions = {"train": [(1, 5, "A cat on a mat. "), (2, 9, "a dog"), (3, 5, "a cat sleeping")],
                "val": [(4, 2, "a bus")]}
    for name in ("train", "val"):
        write_json(root / "annotations" / f"captions_{name}{year}.json", {
            "info": {}, "licenses": [],
            "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w} for i, w, h in images[name]],
            "annotations": [{"image_id": i, "id": aid, "caption": c} for aid, i, c in captions[name]],
        })
        for i, w, h in images[name]:
            write_image(root / f"{name}{year}" / f"{i:012d}.jpg", (w, h), seed=i)
    if instances:
        write_json(root / "annotations" / f"instances_train{year}.json", {
            "images": [], "categories": [{"id": 17, "name": "cat"}, {"id": 2, "name": "bicycle"}],
            "annotations": [{"image_id": 5, "category_id": 17, "id": 1}, {"image_id": 5, "category_id": 2, "id": 2},
                            {"image_id": 5, "category_id": 17, "id": 3}],
        })
    return root


def test_coco_captions_records(tmp_path):
    root = fake_coco(tmp_path / "coco")
    source = open_source(f"coco-captions:{root}")
    assert source.class_names == ["coco"] and source.splits == ["train", "train", "test"]
    assert source.ids == ["train2017/000000000005.jpg", "train2017/000000000009.jpg", "val2017/000000000002.jpg"]
    assert source.texts == [
        {"dataset": "coco", "qa": [], "captions": ["A cat on a mat.", "a cat sleeping"], "objects": ["bicycle", "cat"]},
        {"dataset": "coco", "qa": [], "captions": ["a dog"], "objects": []},
        {"dataset": "coco", "qa": [], "captions": ["a bus"], "objects": []},
    ]
    assert source.image(1).size == (20, 12) and source.image(1).mode == "RGB"


def test_coco_captions_2014(tmp_path):
    root = fake_coco(tmp_path / "coco", year="2014", instances=False)
    source = coco_captions_source(str(root))
    assert source.ids[0] == "train2014/000000000005.jpg" and source.texts[0]["objects"] == []


def test_coco_captions_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenforgeError, match="no COCO caption files"):
        coco_captions_source(str(tmp_path / "empty"))

    root = fake_coco(tmp_path / "a")
    cpath = root / "annotations" / "captions_val2017.json"
    data = json.loads(cpath.read_text())
    data["annotations"].append({"image_id": 77, "id": 99, "caption": "lost"})
    cpath.write_text(json.dumps(data))
    with pytest.raises(TokenforgeError) as err:
        coco_captions_source(str(root))
    assert str(err.value) == f"{cpath}: annotations[1] has image_id 77, not among its images"

    root = fake_coco(tmp_path / "b")
    image = root / "train2017" / "000000000009.jpg"
    image.unlink()
    with pytest.raises(TokenforgeError) as err:
        coco_captions_source(str(root))
    assert str(err.value).startswith(f"{image}: image not found")

    root = fake_coco(tmp_path / "c")
    ipath = root / "annotations" / "instances_train2017.json"
    ipath.write_text("{")
    with pytest.raises(TokenforgeError) as err:
        coco_captions_source(str(root))
    assert str(err.value).startswith(f"{ipath}: not valid JSON")

    ipath.write_text(json.dumps({"categories": [], "annotations": [{"image_id": 5, "category_id": 3}]}))
    with pytest.raises(TokenforgeError, match="category_id 3, not among its categories"):
        coco_captions_source(str(root))


# --- join -------------------------------------------------------------------------------------


def test_join_vqa_sequence(tmp_path):
    vqa, clevr = fake_vqa2(tmp_path / "vqa"), fake_clevr(tmp_path / "clevr")
    source = open_source(f"vqa2:{vqa}+clevr:{clevr}")
    assert source.spec == f"vqa2:{vqa}+clevr:{clevr}"
    assert source.class_names == ["vqa2", "clevr"] and source.mode == "RGB"
    assert source.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert source.splits == ["train", "train", "test", "train", "train", "test"]
    assert [t["dataset"] for t in source.texts] == ["vqa2"] * 3 + ["clevr"] * 3
    assert source.ids[0] == "vqa2/train2014/COCO_train2014_000000000007.jpg"
    assert source.ids[3] == "clevr/images/train/CLEVR_train_000000.png"
    assert source.image(3).size == (24, 16) and source.image(0).size == (18, 12)
    per_class = first_per_class(source, 1)  # one image per dataset and split
    assert per_class.ids == [source.ids[i] for i in (0, 2, 3, 5)] and per_class.texts[1] == source.texts[2]


def test_join_names_modes_and_mismatches(tmp_path):
    joined = join_sources([scenes_source(3, 8, 0), scenes_source(2, 8, 1)])
    assert joined.class_names == ["scenes", "scenes-2"] and joined.labels.tolist() == [0, 0, 0, 1, 1]
    assert joined.texts[3] == scenes_source(2, 8, 1).texts[0] and joined.splits is None
    assert np.array_equal(np.asarray(joined.image(4)), np.asarray(scenes_source(2, 8, 1).image(1)))
    grey = open_source("digits+shapes", shapes_count=4, shapes_size=8)
    assert grey.class_names == ["digits", "shapes"] and grey.mode == "RGB" and grey.texts is None
    assert grey.image(0).mode == "RGB" and grey.labels[-1] == 1
    with pytest.raises(TokenforgeError, match="scenes has text records but shapes has none"):
        open_source("scenes+shapes", scenes_count=2, shapes_count=2)
    with pytest.raises(TokenforgeError, match="vqa2 has its own train/test split but scenes has none"):
        open_source(f"vqa2:{fake_vqa2(tmp_path / 'v')}+scenes", scenes_count=2)
    with pytest.raises(TokenforgeError, match="empty part"):
        open_source("scenes+")
    with pytest.raises(TokenforgeError, match="no sources"):
        join_sources([])
