"""Tests of the image sources: specs and the source registry (built-in names, a user's reader by import path, an
installed plugin), digits, shapes, imagefolder and (fake, tiny) CIFAR pickles."""

from __future__ import annotations

import os
import pickle
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from helpers.images import fake_cifar10, fake_cifar100, make_imagefolder
from PIL import Image

from tokenforge import plugins
from tokenforge.data import PATH_SOURCES, SOURCES, source_kinds
from tokenforge.data.sources import open_source
from tokenforge.data.sources.cifar import RestrictedUnpickler, load_pickle
from tokenforge.data.sources.digits import open_digits
from tokenforge.data.sources.shapes import max_shape_classes, shape_classes
from tokenforge.errors import TokenforgeError

# --- spec ---------------------------------------------------------------------------------------

BUILTINS = ("digits", "shapes", "imagefolder", "cifar", "idx", "scenes", "vqa2", "clevr", "coco-captions")
KINDS = "digits, shapes, imagefolder:PATH, cifar:PATH, idx:PATH, scenes, vqa2:PATH, clevr:PATH or coco-captions:PATH"


@pytest.mark.parametrize("spec", ["xyz", "mnist", "folder:/tmp", "data/images", "imagefolders:/data"])
def test_unknown_source(spec):
    with pytest.raises(TokenforgeError) as err:
        open_source(spec)
    assert str(err.value) == f"source '{spec}': unknown source; expected {KINDS}"


def test_registry_lists_the_builtins():
    assert SOURCES.builtin_names() == BUILTINS
    assert SOURCES.names()[: len(BUILTINS)] == BUILTINS
    assert PATH_SOURCES == {"imagefolder", "cifar", "idx", "vqa2", "clevr", "coco-captions"}
    assert source_kinds() == KINDS
    assert SOURCES.load("digits") is open_digits


@pytest.mark.parametrize("name", sorted(PATH_SOURCES))
@pytest.mark.parametrize("sep", ["", ":"])
def test_missing_path_after_kind(name, sep):
    """Every NAME:PATH reader refuses a spec without PATH the same way ('imagefolder' and 'imagefolder:')."""
    with pytest.raises(TokenforgeError) as err:
        open_source(name + sep)
    assert str(err.value) == f"source '{name}': missing PATH after '{name}:'"


@pytest.mark.parametrize("name", sorted(set(BUILTINS) - PATH_SOURCES))
def test_no_path_sources_refuse_one(name):
    with pytest.raises(TokenforgeError) as err:
        open_source(f"{name}:/data/x")
    assert str(err.value) == f"source '{name}': takes no PATH, got '{name}:/data/x'"


def test_builtin_by_name_takes_the_options():
    source = open_source("shapes", seed=2, shapes_count=5, shapes_classes=2, shapes_size=8)
    assert len(source) == 5 and source.ids[4] == "shapes/2/4" and source.image(0).size == (8, 8)


USER_READER = """
import numpy as np
from PIL import Image

from tokenforge.data.sources import Source

NOT_CALLABLE = 42


def reader(path, options):
    return Source(spec=f"mine:{path}", class_names=["a", "b"], mode="L", labels=np.array([0, 1, 1]),
                  ids=[f"mine/{options.seed}/{i}" for i in range(3)], splits=None,
                  load=lambda i: Image.new("L", (4, 4), 10 * i))


def not_a_source(path, options):
    return [path]
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch, request):
    """A researcher's reader module on sys.path, named after the test (imports and loads are cached by name)."""
    name = f"tf_user_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_READER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_reader_by_import_path(user_module):
    source = open_source(f"{user_module}:reader:/data/scans", seed=7)
    assert source.spec == "mine:/data/scans" and source.ids == ["mine/7/0", "mine/7/1", "mine/7/2"]
    assert source.labels.tolist() == [0, 1, 1] and np.asarray(source.image(2)).max() == 20
    assert open_source(f"{user_module}:reader").spec == "mine:None"  # no PATH: None
    assert open_source(f"{user_module}:reader:C:/x").spec == "mine:C:/x"  # the PATH keeps its ':'
    joined = open_source(f"digits+{user_module}:reader")
    assert joined.class_names == ["digits", "mine"] and len(joined) == 1797 + 3


@pytest.mark.parametrize(
    "target, message",
    [
        ("tf_no_such_module:reader", "shard.source: cannot import module 'tf_no_such_module' of "
         "'tf_no_such_module:reader' (No module named 'tf_no_such_module')"),
        ("{mod}:nope", "shard.source: module '{mod}' has no attribute 'nope' (from '{mod}:nope')"),
        ("{mod}:NOT_CALLABLE", "shard.source: '{mod}:NOT_CALLABLE' is not a source: it is a int, not a callable"),
        ("{mod}:not_a_source", "shard.source: '{mod}:not_a_source' returned a list, not a tokenforge Source"),
    ],
    ids=["missing-module", "missing-attribute", "not-callable", "not-a-source"],
)
def test_user_reader_errors(user_module, target, message):
    target = target.format(mod=user_module)
    with pytest.raises(TokenforgeError) as err:
        open_source(f"{target}:/data/scans")
    assert str(err.value) == message.format(mod=user_module) and "\n" not in str(err.value)


def test_installed_plugin_by_name(user_module, monkeypatch):
    """A source an installed package announces in the "tokenforge.sources" entry-point group."""
    entry = metadata.EntryPoint(name="scans", value=f"{user_module}:reader", group="tokenforge.sources")
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [entry] if group == entry.group else [])
    assert SOURCES.names() == (*BUILTINS, "scans") and source_kinds().endswith("coco-captions:PATH or scans")
    assert open_source("scans:/data/scans").spec == "mine:/data/scans"
    with pytest.raises(TokenforgeError, match="expected digits, .* or scans$"):
        open_source("scan:/data/scans")


# --- digits -----------------------------------------------------------------------------------


def test_digits_scaled_to_uint8():
    from sklearn.datasets import load_digits

    source = open_source("digits")
    assert len(source) == 1797 and source.mode == "L" and source.splits is None
    assert source.class_names == [str(c) for c in range(10)]
    raw = load_digits().images
    for i in (0, 5, 1796):
        image = np.asarray(source.image(i))
        assert image.dtype == np.uint8 and image.shape == (8, 8)
        np.testing.assert_array_equal(image, np.rint(raw[i] * 255 / 16).astype(np.uint8))
    assert max(int(np.asarray(source.image(i)).max()) for i in range(20)) == 255
    sample = source.sample(3)
    assert sample.label == source.labels[3] and sample.source_id == "digits/3" and sample.split is None


# --- shapes -----------------------------------------------------------------------------------


def test_shapes_deterministic_per_seed():
    a = open_source("shapes", seed=3, shapes_count=12, shapes_classes=4, shapes_size=16)
    b = open_source("shapes", seed=3, shapes_count=12, shapes_classes=4, shapes_size=16)
    c = open_source("shapes", seed=4, shapes_count=12, shapes_classes=4, shapes_size=16)
    for i in range(12):
        image = np.asarray(a.image(i))
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, np.asarray(b.image(i)))
    assert any(not np.array_equal(np.asarray(a.image(i)), np.asarray(c.image(i))) for i in range(12))
    assert np.bincount(a.labels).tolist() == [3, 3, 3, 3]


def test_shapes_image_independent_of_count():
    small = open_source("shapes", seed=0, shapes_count=5, shapes_classes=3, shapes_size=16)
    large = open_source("shapes", seed=0, shapes_count=50, shapes_classes=3, shapes_size=16)
    np.testing.assert_array_equal(np.asarray(small.image(4)), np.asarray(large.image(4)))


def test_shape_classes_unique_and_varied():
    classes = shape_classes(max_shape_classes())
    assert len(set(classes)) == max_shape_classes() >= 300
    first = shape_classes(10)
    assert len({kind for kind, _, _ in first}) == 10 and len({colour for _, colour, _ in first}) == 10
    names = open_source("shapes", shapes_count=0, shapes_classes=max_shape_classes()).class_names
    assert names[0] == "red-circle" and len(set(names)) == len(names)
    # every style renders something visible
    source = open_source("shapes", shapes_count=max_shape_classes(), shapes_classes=max_shape_classes(), shapes_size=16)
    for i in (0, 105, 230):
        assert np.asarray(source.image(i)).std() > 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shapes_classes": 0}, "--shapes-classes 0"),
        ({"shapes_classes": 10_000}, "--shapes-classes 10000"),
        ({"shapes_size": 4}, "--shapes-size 4"),
        ({"shapes_count": -1}, "--shapes-count -1"),
    ],
)
def test_shapes_bad_options(kwargs, message):
    with pytest.raises(TokenforgeError, match=message):
        open_source("shapes", **kwargs)


# --- imagefolder ------------------------------------------------------------------------------


def test_imagefolder_flat(tmp_path):
    root = make_imagefolder(tmp_path / "data", {"zebra": 2, "ant": 3})
    (root / "ant" / ".hidden.png").write_bytes(b"not an image")  # hidden: skipped
    (root / "ant" / "notes.txt").write_text("not an image")  # not an image extension: ignored
    (root / ".cache").mkdir()  # hidden folder: not a class
    source = open_source(f"imagefolder:{root}")
    assert source.class_names == ["ant", "zebra"]
    assert source.labels.tolist() == [0, 0, 0, 1, 1]
    assert source.ids[0] == "ant/img0.png" and source.splits is None and source.mode == "RGB"
    expected = np.asarray(Image.open(root / "zebra" / "img1.png"))
    np.testing.assert_array_equal(np.asarray(source.image(4)), expected)


def test_imagefolder_train_test(tmp_path):
    root = tmp_path / "data"
    make_imagefolder(root / "train", {"a": 3, "b": 2})
    make_imagefolder(root / "val", {"b": 1}, seed=1)
    source = open_source(f"imagefolder:{root}")
    assert source.class_names == ["a", "b"]
    assert source.splits == ["train"] * 5 + ["test"]
    assert source.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert source.ids[-1] == "val/b/img0.png"


def test_imagefolder_train_only(tmp_path):
    root = tmp_path / "data"
    make_imagefolder(root / "train", {"a": 2, "b": 1})
    source = open_source(f"imagefolder:{root}")
    assert source.class_names == ["a", "b"] and source.splits is None
    assert source.ids[0] == "train/a/img0.png"


def test_imagefolder_test_class_not_in_train(tmp_path):
    root = tmp_path / "data"
    make_imagefolder(root / "train", {"a": 1})
    make_imagefolder(root / "test", {"x": 1})
    with pytest.raises(TokenforgeError, match="class not in"):
        open_source(f"imagefolder:{root}")


def test_imagefolder_errors(tmp_path):
    with pytest.raises(TokenforgeError, match="no such directory"):
        open_source(f"imagefolder:{tmp_path / 'missing'}")
    root = make_imagefolder(tmp_path / "data", {"a": 1})
    (root / "empty").mkdir()
    with pytest.raises(TokenforgeError) as err:
        open_source(f"imagefolder:{root}")
    assert str(err.value) == f"{root / 'empty'}: class has no images"
    (root / "empty" / "x.png").write_bytes(b"\x89PNG garbage")
    source = open_source(f"imagefolder:{root}")
    with pytest.raises(TokenforgeError) as err:
        source.image(1)
    assert str(err.value).startswith(f"{root / 'empty' / 'x.png'}: cannot read image (")
    assert "\n" not in str(err.value)


# --- cifar ------------------------------------------------------------------------------------


def test_cifar10(tmp_path):
    folder = fake_cifar10(tmp_path, per_batch=4)
    for spec in (f"cifar:{tmp_path}", f"cifar:{folder}"):  # the parent or the batches folder
        source = open_source(spec)
        assert len(source) == 24 and source.class_names[0] == "airplane" and len(source.class_names) == 10
        assert source.splits == ["train"] * 20 + ["test"] * 4
        assert source.ids[4] == "data_batch_2/0"
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f)
    row = batch[b"data"][1]
    image = np.asarray(source.image(5))
    assert image.shape == (32, 32, 3)
    np.testing.assert_array_equal(image[..., 0].ravel(), row[:1024])  # red plane first
    np.testing.assert_array_equal(image[..., 2].ravel(), row[2048:])
    assert source.labels[5] == batch[b"labels"][1]


def test_cifar10_repickled_by_python3_at_protocol_2(tmp_path):
    # Python 3 writes bytes at protocol 2 as _codecs.encode(text, "latin1"): the one extra global allowed.
    folder = fake_cifar10(tmp_path, per_batch=3, protocol=2)
    assert b"_codecs\nencode" in (folder / "batches.meta").read_bytes()
    assert b"_codecs\nencode" in (folder / "data_batch_1").read_bytes()
    source = open_source(f"cifar:{folder}")
    reference = open_source(f"cifar:{fake_cifar10(tmp_path / 'default', per_batch=3)}")
    assert source.class_names == reference.class_names and source.class_names[0] == "airplane"
    assert source.splits == reference.splits and np.array_equal(source.labels, reference.labels)
    for i in (0, 7, 17):
        np.testing.assert_array_equal(np.asarray(source.image(i)), np.asarray(reference.image(i)))


def test_protocol_2_bytes_values_load(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"name": b"airplane", "data": np.arange(4, dtype=np.uint8)}, protocol=2))
    batch = load_pickle(path)
    assert batch["name"] == b"airplane" and batch["data"].tolist() == [0, 1, 2, 3]


def test_cifar100_fine_labels(tmp_path):
    folder = fake_cifar100(tmp_path)
    source = open_source(f"cifar:{folder}")
    assert len(source.class_names) == 100 and source.class_names[7] == "c7"
    assert source.splits == ["train"] * 6 + ["test"] * 3
    with open(folder / "test", "rb") as f:
        assert source.labels[6:].tolist() == pickle.load(f)["fine_labels"]


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path):
    folder = fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Exploit(marker)]}, f)
    with pytest.raises(TokenforgeError) as err:
        open_source(f"cifar:{folder}")
    message = str(err.value)
    assert message.startswith(f"{folder / 'data_batch_3'}: refusing to unpickle global '")
    assert "system" in message and not marker.exists()


@pytest.mark.parametrize("value", [1.5, (1, 2), {1, 2}, None])
def test_pickle_plain_types_only(tmp_path, value):
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({"data": value}, f)
    with pytest.raises(TokenforgeError, match="refusing|unexpected"):
        load_pickle(path)


def test_pickle_object_array_refused(tmp_path):
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({"data": np.array([1, "x"], dtype=object)}, f)
    with pytest.raises(TokenforgeError, match="refusing"):
        load_pickle(path)


def test_pickle_protocol5_arrays_load(tmp_path):
    path = tmp_path / "batch"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3)}, f, protocol=5)
    np.testing.assert_array_equal(load_pickle(path)["data"], np.arange(6).reshape(2, 3))


def test_cifar_errors(tmp_path):
    with pytest.raises(TokenforgeError, match="no such directory"):
        open_source(f"cifar:{tmp_path / 'missing'}")
    with pytest.raises(TokenforgeError, match="not a CIFAR folder"):
        open_source(f"cifar:{tmp_path}")
    folder = fake_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(TokenforgeError, match="test_batch: not a readable CIFAR pickle"):
        open_source(f"cifar:{folder}")
    (folder / "data_batch_5").unlink()
    with pytest.raises(TokenforgeError, match="data_batch_5: CIFAR file not found"):
        open_source(f"cifar:{folder}")


def test_cifar_bad_rows(tmp_path):
    folder = fake_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(TokenforgeError, match="3072"):
        open_source(f"cifar:{folder}")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)
    with pytest.raises(TokenforgeError, match="out of range"):
        open_source(f"cifar:{folder}")


def test_restricted_unpickler_is_a_pickle_unpickler():
    assert issubclass(RestrictedUnpickler, pickle.Unpickler)
