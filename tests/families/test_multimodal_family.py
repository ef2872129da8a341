"""The VQA and captioning families: items from text records, task assignment, groups."""

import pytest

from tokenforge import families
from tokenforge.errors import TokenforgeError
from tokenforge.families.multimodal import task_items, training_answer


def record(dataset="scenes", qa=(), captions=(), objects=()):
    return {"dataset": dataset, "qa": [dict(q) for q in qa], "captions": list(captions), "objects": list(objects)}


def qa(question, answers, family):
    return {"question": question, "answers": list(answers), "family": family}


RECORDS = [
    record(qa=[qa("what color is the cube?", ["red"], "color"), qa("how many spheres?", ["2"], "count")]),
    record(qa=[qa("is there a cube?", ["yes"], "exists")]),
    record("vqa2", qa=[qa("what is it?", ["dog", "dog", "cat"] + ["dog"] * 7, "other")]),
]


def test_training_answer_is_the_most_frequent_first_on_ties():
    assert training_answer(["cat", "dog", "dog"]) == "dog"
    assert training_answer(["cat", "dog"]) == "cat"
    with pytest.raises(TokenforgeError):
        training_answer([])


def test_vqa_items_by_family_and_by_dataset():
    vqa = families.get("vqa", by="family")
    assert vqa.groups(RECORDS) == ["color", "count", "exists", "other"]  # all once: by name
    items = vqa.items(RECORDS, ["count", "other"])
    assert items.image == [0, 2]
    assert items.prompt == ["how many spheres?", "what is it?"]
    assert items.target == ["2", "dog"]
    assert len(items.references[1]) == 10
    by_dataset = families.get("vqa", by="dataset")
    assert by_dataset.groups(RECORDS) == ["scenes", "vqa2"]  # scenes has 3 questions, vqa2 1
    assert len(by_dataset.items(RECORDS, ["scenes"])) == 3


def test_split_by_must_fit_the_family():
    with pytest.raises(TokenforgeError, match="split.by"):
        families.get("vqa", by="object")
    with pytest.raises(TokenforgeError, match="split.by"):
        families.get("captioning", by="family")


def test_captioning_assigns_each_image_to_one_task_the_smallest_so_far():
    cap = families.get("captioning", by="object")
    records = [
        record(captions=["a cube"], objects=["cube"]),
        record(captions=["a cube and a sphere"], objects=["cube", "sphere"]),  # cube's task has 1 image, sphere's 0
        record(captions=["a sphere and a cube"], objects=["sphere", "cube"]),  # now 1 and 1: the first task
        record(captions=["a cone"], objects=["cone"]),  # no task's object: left out
        record(captions=[], objects=["cube"]),  # no caption: left out
    ]
    assert cap.assign(records, [["cube"], ["sphere"]]) == [0, 1, 0, None, None]
    train = cap.items(records, ["cube"], tasks=[["cube"], ["sphere"]])
    assert train.image == [0, 2] and train.target == ["a cube", "a sphere and a cube"]
    assert set(train.prompt) == {"a picture of"}
    evaluation = cap.items(records, ["sphere"], tasks=[["cube"], ["sphere"]], evaluation=True)
    assert evaluation.image == [1] and evaluation.references == [["a cube and a sphere"]]


def test_captioning_scores_object_recall_only_where_records_have_scene_layouts():
    cap = families.get("captioning", by="object")
    scene = [{"color": "red", "shape": "cube", "size": "large", "x": 0.2, "y": 0.5},
             {"color": "blue", "shape": "sphere", "size": "small", "x": 0.8, "y": 0.5}]  # fmt: skip
    records = [
        {**record(captions=["a large red cube and a small blue sphere"], objects=["cube", "sphere"]), "scene": scene},
        record(captions=["a cube"], objects=["cube"]),  # no layout: left out of the recall
    ]
    items = cap.items(records, ["cube"], tasks=[["cube"]], evaluation=True)
    predictions = ["a large red cube and a small green sphere", "a cube"]
    with_records = cap.score(predictions, items, records=records)
    assert set(with_records) == {"bleu4", "cider", "object_recall", "shape_recall", "count_accuracy"}
    assert with_records["object_recall"] == 0.5 and with_records["shape_recall"] == 1.0
    assert with_records["count_accuracy"] == 0.0  # the prediction states no total ("two objects")
    assert set(cap.score(predictions, items)) == {"bleu4", "cider"}
    plain = [{k: v for k, v in r.items() if k != "scene"} for r in records]
    assert set(cap.score(predictions, items, records=plain)) == {"bleu4", "cider"}
    vqa = families.get("vqa", by="family")
    questions = vqa.items(RECORDS, ["color"])
    assert vqa.score(["red"], questions, records=RECORDS) == {"vqa_accuracy": 1.0}


def test_task_items_reads_the_groups_of_a_manifest():
    vqa = families.get("vqa", by="family")
    split = {"tasks": [{"task": 0, "class_names": ["color"]}, {"task": 1, "class_names": ["count", "exists"]}]}
    assert task_items(vqa, RECORDS, split, [1]).group == ["count", "exists"]
    assert task_items(vqa, RECORDS, split, [0, 1]).group == ["color", "count", "exists"]


def test_no_groups_is_an_error():
    with pytest.raises(TokenforgeError, match="nothing to split"):
        families.get("captioning", by="object").groups([record(captions=["x"])])
