"""The memory policy and storage: budgets in bytes on disk, class-balanced shrinking, the methods, the file."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from tokenforge.continual.memory import Memory, compress, positions_encoding, read_memory, serialize, write_memory
from tokenforge.continual.policy import (
    Policy,
    _proxy,
    build_memory,
    check_minimum,
    fit_budget,
    keep_count,
    resolve_budget,
    resolve_tokens,
)
from tokenforge.errors import TokenforgeError
from tokenforge.models.vit import ModelConfig, TokenViT

CODES = 32


def tiny(num_classes=6):
    torch.manual_seed(0)
    cfg = ModelConfig(grid=(4, 4), codebook_size=CODES, code_dim=8, num_classes=num_classes, embed_dim=32, depth=2)
    return TokenViT(cfg, torch.randn(CODES, 8)).eval()


def data(num_classes=6, per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    ids = rng.integers(0, CODES, (len(labels), 4, 4))
    return [f"train_{i:06d}" for i in range(len(labels))], labels, ids


def policy(**kw):
    base = dict(method="coretokenset", selection="class_balanced", scorer="random", token_fraction=0.5,
                num_codes=CODES, num_positions=16, num_classes=6)
    return Policy(**{**base, **kw})


def run_tasks(pol, tasks=((0, 1), (2, 3), (4, 5)), seed=0, tmp_path=None):
    """Build the memory after each task as the trainer does; yield (memory, bytes on disk, seen classes)."""
    keys, labels, ids = data()
    model, memory, seen = tiny(), Memory.empty(), []
    pol.tokens = resolve_tokens(pol, keys, labels, ids)
    for t, classes in enumerate(tasks):
        seen += list(classes)
        m = np.isin(labels, classes)
        memory, info = build_memory(model, memory, [k for k, x in zip(keys, m) if x], labels[m], ids[m], t, seen, pol, seed)
        nbytes = None
        if tmp_path is not None:
            nbytes = write_memory(memory, tmp_path / f"m{t}", pol.num_codes, pol.num_positions, pol.num_classes)
        yield memory, nbytes, list(seen), info


@pytest.mark.parametrize("method", ["coreset", "coretokens", "coretokenset"])
@pytest.mark.parametrize("budget", [600, 1500, 4000])
def test_budget_holds_on_disk_after_every_task_and_classes_stay_balanced(tmp_path, method, budget):
    pol = policy(method=method, budget=budget)
    for memory, nbytes, seen, info in run_tasks(pol, tmp_path=tmp_path):
        assert nbytes <= budget
        counts = np.bincount(memory.labels, minlength=6)[seen]
        assert counts.min() >= 1 and counts.max() - counts.min() <= 1  # class-balanced
        assert sorted(set(memory.labels.tolist())) == sorted(seen)
        assert info["samples_per_class"] == {c: int(n) for c, n in zip(seen, counts)}


def test_older_tasks_give_up_space_but_keep_their_best_samples(tmp_path):
    pol = policy(budget=2000, selection="class_balanced")
    history = [m for m, *_ in run_tasks(pol, tmp_path=tmp_path)]
    first, last = history[0], history[-1]
    assert (last.labels == 0).sum() < (first.labels == 0).sum()  # task 0 shrank as tasks arrived
    kept = [k for k, lab in zip(last.keys, last.labels) if lab == 0]
    before = [k for k, lab in zip(first.keys, first.labels) if lab == 0]
    assert kept == before[: len(kept)]  # a prefix of its priority order: the last-ranked left first


def test_the_budget_is_used_nearly_up(tmp_path):
    pol = policy(budget=3000)
    for memory, nbytes, seen, _ in run_tasks(pol, tmp_path=tmp_path):
        more = Memory.concat(memory, memory.rows([0]))  # one more sample would not fit
        assert pol.nbytes(more) > 3000 or len(memory) == 40 * len(seen)


def test_methods_keep_what_they_promise():
    keys, labels, ids = data()
    coreset = policy(method="coreset", budget=3000)
    assert coreset.tokens == 16
    tokens = policy(method="coretokens", budget=3000)
    k = resolve_tokens(tokens, keys, labels, ids)
    assert 1 <= k < 16
    # coretokens keeps every sample at that k: the all-sample memory fits, one more token would not
    assert policy(method="coretokens", budget=10**9).tokens == 0  # resolved later, from the data
    assert policy(method="coretokenset", token_fraction=0.25, budget=3000).tokens == 4
    for method in ("none", "joint"):
        assert not policy(method=method).keeps_memory
    memory, *_ = next(run_tasks(policy(method="coretokens", budget=10**6)))
    assert len(memory) == 80 and memory.tokens_per_sample == 16  # unlimited: every sample, every token


def test_coretokens_takes_the_most_tokens_that_fit_every_sample():
    keys, labels, ids = data()
    pol = policy(method="coretokens", budget=2500)
    k = resolve_tokens(pol, keys, labels, ids)

    def every_sample(tokens):  # every sample with `tokens` scattered tokens, as resolve_tokens sizes it
        return pol.nbytes(_proxy(keys, labels, ids, tokens))

    assert every_sample(k) <= 2500 < every_sample(k + 1)


def test_a_budget_too_small_for_one_sample_per_class_states_the_minimum():
    keys, labels, ids = data()
    pol = policy(method="coreset", budget=200)
    with pytest.raises(TokenforgeError, match=r"memory.budget: 200 bytes cannot hold one sample per class \(6 classes x 16 tokens\); "
                       r"the minimum is about \d+ bytes"):
        check_minimum(pol, keys, labels, ids)
    need = check_minimum(policy(method="coreset", budget=10**6), keys, labels, ids)
    assert check_minimum(policy(method="coreset", budget=need), keys, labels, ids) == need
    with pytest.raises(TokenforgeError, match="minimum"):
        list(run_tasks(policy(method="coreset", budget=200)))


def test_selection_is_deterministic_for_a_seed(tmp_path):
    for selection in ("random", "class_balanced", "herding", "gradient"):
        for scorer in ("random", "rollout"):
            a = [m for m, *_ in run_tasks(policy(budget=2000, selection=selection, scorer=scorer), seed=3)]
            b = [m for m, *_ in run_tasks(policy(budget=2000, selection=selection, scorer=scorer), seed=3)]
            for x, y in zip(a, b):
                assert x.keys == y.keys and np.array_equal(x.positions, y.positions) and np.array_equal(x.ids, y.ids)
    c = [m for m, *_ in run_tasks(policy(budget=2000, selection="class_balanced"), seed=4)]
    assert c[0].keys != a[0].keys or not np.array_equal(c[0].positions, a[0].positions)


def test_random_selection_need_not_be_balanced_but_holds_the_budget(tmp_path):
    for memory, nbytes, seen, _ in run_tasks(policy(budget=2500, selection="random"), tmp_path=tmp_path):
        assert nbytes <= 2500 and set(memory.labels.tolist()) <= set(seen)


def test_kept_ids_are_the_grid_values_at_the_kept_positions():
    keys, labels, ids = data()
    memory, *_ = next(run_tasks(policy(budget=3000)))
    index = {k: i for i, k in enumerate(keys)}
    rows = ids.reshape(len(ids), -1)[[index[k] for k in memory.keys]]
    assert np.array_equal(np.take_along_axis(rows, memory.positions, 1), memory.ids)
    assert (np.diff(memory.positions, axis=1) > 0).all()  # sorted, unique positions
    assert np.array_equal(labels[[index[k] for k in memory.keys]], memory.labels)


def test_samples_per_class_caps_without_a_budget():
    memory, *_ = next(run_tasks(policy(budget=None, samples_per_class=3)))
    assert np.bincount(memory.labels).tolist() == [3, 3]


def test_fit_budget_with_no_candidates_of_a_class_keeps_zero():
    mem, quota = fit_budget(Memory.empty(), policy(budget=1000), [0, 1])
    assert len(mem) == 0 and quota == {0: 0, 1: 0}


def test_policy_errors_name_the_key():
    with pytest.raises(TokenforgeError, match="memory.method: unknown method 'x'"):
        policy(method="x")
    with pytest.raises(TokenforgeError, match="memory.samples_per_class: must be >= 1"):
        policy(samples_per_class=0)
    with pytest.raises(TokenforgeError, match="memory.budget: method 'coreset' needs a budget"):
        policy(method="coreset", budget=None)
    with pytest.raises(TokenforgeError, match="token_fraction"):
        keep_count(16, 0.0)
    assert keep_count(16, 0.5) == 8 and keep_count(16, 0.01) == 1 and keep_count(16, 1.0) == 16


@pytest.mark.parametrize(
    "value, expected",
    [(None, None), (1234, 1234), ("1234", 1234), ("1%", 100), ("0.5%", 50), (" 10 % ", 1000), ("100%", 10000)],
)
def test_resolve_budget(value, expected):
    assert resolve_budget(value, 10000) == expected


@pytest.mark.parametrize("value", ["abc", "0%", "150%", 0, -5, True, "1 MB"])
def test_resolve_budget_rejects(value):
    with pytest.raises(TokenforgeError, match="memory.budget"):
        resolve_budget(value, 10000)


def test_a_share_needs_the_token_bytes():
    with pytest.raises(TokenforgeError, match="no train tokens"):
        resolve_budget("1%", None)


def test_write_read_round_trip_and_bytes_on_disk(tmp_path):
    mem = Memory(["a", "b"], np.array([1, 2]), np.array([0, 0]), np.array([[0, 5], [3, 15]]), np.array([[7, 8], [9, 31]]))
    path = tmp_path / "memory.arrows.zst"
    nbytes = write_memory(mem, path, num_codes=32, num_positions=16)
    assert nbytes == path.stat().st_size == len(serialize(mem, 32, 16))
    back = read_memory(path)
    assert back.keys == mem.keys
    for field in ("labels", "tasks", "positions", "ids"):
        assert np.array_equal(getattr(back, field), getattr(mem, field))
    import pyarrow as pa  # any Arrow reader opens it: one zstd frame around an IPC stream

    with pa.input_stream(str(path), compression="zstd") as stream:
        table = pa.ipc.open_stream(stream).read_all()
    assert table.column_names == ["key", "label", "task", "positions", "ids"]
    assert table.schema.field("ids").type.value_type == pa.uint8()


def test_pixel_patches_round_trip(tmp_path):
    patches = np.random.default_rng(0).integers(0, 256, (3, 2, 12)).astype(np.uint8)
    mem = Memory(list("abc"), np.array([0, 1, 2]), np.zeros(3, np.int64), np.array([[0, 1], [2, 3], [4, 5]]), patches)
    write_memory(mem, tmp_path / "m", 256, 16)
    back = read_memory(tmp_path / "m")
    assert back.ids.dtype == np.uint8 and np.array_equal(back.ids, patches)


def test_empty_memory_round_trip(tmp_path):
    path = tmp_path / "memory.arrows.zst"
    write_memory(Memory.empty(), path, 32, 16)
    assert len(read_memory(path)) == 0


def test_unreadable_memory_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "memory.arrows.zst"
    bad.write_bytes(b"not zstd at all")
    with pytest.raises(TokenforgeError, match="not a tokenforge memory file"):
        read_memory(bad)
    with pytest.raises(TokenforgeError, match="memory file not found"):
        read_memory(tmp_path / "missing")


def test_memory_concat():
    a = Memory(["a"], np.array([1]), np.array([0]), np.array([[0, 1]]), np.array([[2, 3]]))
    b = Memory(["b"], np.array([2]), np.array([1]), np.array([[4, 5]]), np.array([[6, 7]]))
    both = Memory.empty().concat(a).concat(b)
    assert both.keys == ["a", "b"] and both.ids.tolist() == [[2, 3], [6, 7]]
    with pytest.raises(TokenforgeError, match="different token counts"):
        a.concat(Memory(["c"], np.array([2]), np.array([1]), np.array([[4]]), np.array([[6]])))


def test_a_familys_extra_columns_survive_rows_concat_and_the_file(tmp_path):
    # The family seam: VQA rows carry their question and answer; classification rows carry nothing extra.
    ids = np.arange(6, dtype=np.int64).reshape(3, 2)
    memory = Memory(["a", "b", "c"], np.array([0, 1, 1]), np.zeros(3, np.int64), np.array([[0, 1]] * 3), ids,
                    {"question": ["what colour?", "how many?", "is there a cube?"], "answer": ["red", "2", "yes"]})
    picked = memory.rows(np.array([2, 0]))
    assert picked.extra == {"question": ["is there a cube?", "what colour?"], "answer": ["yes", "red"]}
    joined = picked.concat(memory.rows(np.array([1])))
    assert joined.extra["answer"] == ["yes", "red", "2"]
    write_memory(joined, tmp_path / "m.arrows.zst", num_codes=16, num_positions=4)
    back = read_memory(tmp_path / "m.arrows.zst")
    assert back.extra == joined.extra and back.keys == joined.keys and np.array_equal(back.ids, joined.ids)
    with pytest.raises(TokenforgeError, match="cannot join memories with columns"):
        joined.concat(Memory(["d"], np.array([0]), np.zeros(1, np.int64), np.array([[0, 1]]), ids[:1]))
    plain = Memory(["d"], np.array([0]), np.zeros(1, np.int64), np.array([[0, 1]]), ids[:1])
    assert serialize(plain, 16, 4) == serialize(plain.rows(np.array([0])), 16, 4)  # no extra columns: bytes as before


# --- the positions' two encodings: a list of small ints or a bitmask of the grid, whichever is smaller raw ---------


def scattered_memory(rows=100, n=144, k=36, codes=64, seed=0, **extra) -> Memory:
    """`rows` rows of k random ascending positions of n, with random ids below `codes`: a core tokenset's memory."""
    rng = np.random.default_rng(seed)
    positions = np.sort(np.argsort(rng.random((rows, n)), axis=1)[:, :k], axis=1).astype(np.int64)
    ids = rng.integers(0, codes, (rows, k))
    return Memory([f"train_{i:06d}" for i in range(rows)], rng.integers(0, 10, rows), rng.integers(0, 3, rows), positions, ids, extra)


def stored(path) -> tuple[dict, pa.DataType]:
    """The file's schema metadata and its positions column's type."""
    with pa.input_stream(str(path), compression="zstd") as stream:
        schema = pa.ipc.open_stream(stream).schema
    return schema.metadata or {}, schema.field("positions").type


def assert_same(back: Memory, mem: Memory):
    assert back.keys == mem.keys and back.extra == mem.extra
    for name in ("labels", "tasks", "positions", "ids"):
        got, want = getattr(back, name), getattr(mem, name)
        assert got.shape == want.shape and np.array_equal(got, want), name
    assert back.ids.dtype == (np.uint8 if mem.ids.ndim == 3 else np.int64) and back.positions.dtype == np.int64


@pytest.mark.parametrize("encoding", ["list", "mask", "auto"])
def test_both_position_encodings_round_trip(tmp_path, encoding):
    text = {"prompt": [f"what is {i}?" for i in range(100)], "target": [str(i) for i in range(100)]}
    for mem in (scattered_memory(), scattered_memory(seed=1, **text)):  # classification; a text family's extra columns
        write_memory(mem, tmp_path / "m", 64, 144, positions=encoding)
        assert_same(read_memory(tmp_path / "m"), mem)
        metadata, kind = stored(tmp_path / "m")
        if encoding == "list":
            assert b"positions" not in metadata and pa.types.is_fixed_size_list(kind)
        else:  # auto: 36 of 144 positions take 18 mask bytes a row, not 36
            assert metadata[b"positions"] == b"mask" and metadata[b"num_positions"] == b"144" and kind == pa.binary(18)
    patches = np.random.default_rng(0).integers(0, 256, (3, 10, 12)).astype(np.uint8)  # pixel patches: (M, k, F)
    mem = Memory(list("abc"), np.array([0, 1, 2]), np.zeros(3, np.int64), scattered_memory(3, 64, 10).positions, patches)
    write_memory(mem, tmp_path / "p", 256, 64, positions=encoding)
    assert_same(read_memory(tmp_path / "p"), mem)
    metadata, _ = stored(tmp_path / "p")
    assert metadata[b"unit_size"] == b"12"  # beside the mask's keys, not replaced by them
    assert (metadata.get(b"positions") == b"mask") == (encoding != "list")


def test_auto_picks_the_smaller_raw_encoding():
    assert positions_encoding(scattered_memory(k=36), 144) == "mask"  # 18 bytes against 36
    assert positions_encoding(scattered_memory(k=2), 144) == "list"  # 2 bytes against 18
    assert positions_encoding(scattered_memory(k=18), 144) == "list"  # a tie: the list
    assert positions_encoding(scattered_memory(k=144, n=576), 576) == "mask"  # uint16: 288 bytes against 72
    assert positions_encoding(scattered_memory(k=36, n=576), 576) == "list"  # 72 against 72
    assert positions_encoding(Memory.empty(), 144) == positions_encoding(Memory.empty(), 144, "mask") == "list"


def test_the_mask_is_smaller_on_disk_for_a_quarter_of_the_grid(tmp_path):
    mem = scattered_memory()
    as_list = write_memory(mem, tmp_path / "list", 64, 144, positions="list")
    as_mask = write_memory(mem, tmp_path / "mask", 64, 144, positions="mask")
    print(f"100 rows of 36 of 144 positions: list {as_list} bytes, mask {as_mask} bytes")
    assert as_mask < as_list and len(serialize(mem, 64, 144)) == as_mask  # auto: the mask


def test_a_list_file_without_the_key_still_reads(tmp_path):
    mem = scattered_memory()
    path = tmp_path / "old.arrows.zst"
    write_memory(mem, path, 64, 144, positions="list")  # the format of every file written before the mask
    assert stored(path)[0] == {}
    assert_same(read_memory(path), mem)


def test_positions_a_mask_cannot_hold_are_written_as_a_list_or_refused(tmp_path):
    rest = list(range(10, 44))
    for row in ([3, 3] + rest, [5, 4] + rest, rest + [100, 144]):  # repeated, unsorted, past the grid
        mem = scattered_memory(rows=2)
        mem.positions[1] = row
        write_memory(mem, tmp_path / "m", 64, 144)  # auto: falls back to the list
        assert positions_encoding(mem, 144) == "list" and b"positions" not in stored(tmp_path / "m")[0]
        assert_same(read_memory(tmp_path / "m"), mem)
        with pytest.raises(TokenforgeError, match=r"positions encoding 'mask': a row's positions are not strictly ascending"):
            serialize(mem, 64, 144, positions="mask")


def test_an_empty_memory_round_trips_in_every_encoding(tmp_path):
    for encoding in ("list", "mask", "auto"):
        write_memory(Memory.empty(), tmp_path / "m", 32, 144, positions=encoding)
        assert len(read_memory(tmp_path / "m")) == 0 and stored(tmp_path / "m")[0] == {}


def test_a_bad_positions_encoding_is_one_clear_error(tmp_path):
    with pytest.raises(TokenforgeError, match="unknown value 'bits'"):
        write_memory(scattered_memory(), tmp_path / "m", 64, 144, positions="bits")
    with pytest.raises(TokenforgeError, match="unknown value 'bits'"):
        serialize(Memory.empty(), 64, 144, positions="bits")


def test_a_mask_whose_rows_disagree_with_the_ids_names_the_file(tmp_path):
    mem = scattered_memory(rows=3)
    with pa.input_stream(pa.BufferReader(serialize(mem, 64, 144)), compression="zstd") as stream:
        table = pa.ipc.open_stream(stream).read_all()
    wider = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(3 * 37), pa.uint8()), 37)  # 37 ids a row, 36 positions
    table = table.set_column(table.schema.get_field_index("ids"), "ids", wider)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    path = tmp_path / "bad.arrows.zst"
    path.write_bytes(compress(sink.getvalue()))
    with pytest.raises(TokenforgeError, match=r"bad.arrows.zst: memory file's position mask row 0 keeps 36 positions, its ids 37"):
        read_memory(path)
