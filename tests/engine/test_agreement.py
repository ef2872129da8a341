"""The ranks' agreement before the outputs are written (engine/train.py `agreed`), for every family: two gloo
processes gather their memories' digests; equal ones let rank 0 alone write, different ones fail every rank."""

import os

import pytest
import torch.multiprocessing as mp

from tokenforge.engine.launch import free_port

pytestmark = pytest.mark.slow


def _rank(rank: int, port: int, digests: list[str], results) -> None:
    import torch.distributed as dist

    from tokenforge.engine.train import agreed
    from tokenforge.errors import TokenforgeError

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = agreed(digests[rank], task=3)
    except TokenforgeError as exc:
        results[rank] = str(exc)
    finally:
        dist.destroy_process_group()


def _run(digests: list[str]) -> list:
    with mp.Manager() as manager:
        results = manager.list([None, None])
        mp.spawn(_rank, args=(free_port(), digests, results), nprocs=2, join=True)
        return list(results)


def test_ranks_that_built_the_same_memory_agree_and_rank_0_writes():
    assert _run(["ab" * 32, "ab" * 32]) == [True, False]


def test_ranks_that_built_different_memories_fail_with_one_line_each():
    results = _run(["ab" * 32, "cd" * 32])
    for message in results:
        assert message == "task 3: the ranks built different memories (abababababab, cdcdcdcdcdcd)"


def test_one_process_writes_without_a_process_group(monkeypatch):
    from tokenforge.engine.train import agreed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert agreed("ab" * 32, task=0) is True
