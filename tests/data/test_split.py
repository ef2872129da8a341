import json

import pytest

from tokenforge.cli import main
from tokenforge.data.split import make_tasks, resolve_order
from tokenforge.errors import TokenforgeError

NAMES = [str(i) for i in range(10)]


def test_seeded_shuffle_is_deterministic_and_a_permutation():
    a, b = resolve_order(NAMES, None, 3), resolve_order(NAMES, None, 3)
    assert a == b and sorted(a) == list(range(10))
    assert resolve_order(NAMES, None, 4) != a


def test_explicit_order_by_name_or_label():
    assert resolve_order(["cat", "dog", "eel"], ["eel", "0", "dog"], 0) == [2, 0, 1]


@pytest.mark.parametrize("order,msg", [(["3", "x"], "unknown class 'x'"), (["3", "3"], "more than once")])
def test_bad_order(order, msg):
    with pytest.raises(TokenforgeError, match=msg):
        resolve_order(NAMES, order, 0)


def test_tasks_even_split_and_too_many():
    assert make_tasks(NAMES, 5, None, list(range(10))) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert make_tasks(NAMES, 2, 3, list(range(10))) == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(TokenforgeError, match="need 12 classes"):
        make_tasks(NAMES, 4, 3, list(range(10)))


def test_cli_writes_manifests(tmp_path, capsys):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(NAMES))
    out = tmp_path / "split"
    assert main(["split", "--classes", str(classes), "--out", str(out), "--tasks", "5", "--seed", "1"]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks["num_classes"] == 10
    flat = [c for t in tasks["tasks"] for c in t["classes"]]
    assert sorted(flat) == list(range(10))
    for t in range(5):
        assert json.loads((out / f"task-{t}.json").read_text()) == tasks["tasks"][t]


def test_cli_repeated_class_fails_cleanly(tmp_path, capsys):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(NAMES))
    out = tmp_path / "split"
    code = main(["split", "--classes", str(classes), "--out", str(out), "--tasks", "2", "--order", "1", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split.order" in err[0] and "more than once" in err[0]
    assert not out.exists()
