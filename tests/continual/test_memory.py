"""The memory policy and storage: budgets in bytes on disk, class-balanced shrinking, the methods, the file."""

import numpy as np
import pytest
import torch

from tokenforge.continual.memory import Memory, read_memory, serialize, write_memory
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
