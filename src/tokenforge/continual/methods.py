"""Memory methods (`memory.method`): whether a replay memory is kept after each task, and what a kept sample holds.

Everything else is shared by every method: which samples are kept first (`memory.selection`, continual/selection.py),
which tokens (`memory.scorer`, continual/scorers.py), the byte budget and its fit (continual/policy.py), the memory
file (continual/memory.py) and how it is replayed (continual/replay.py). A method decides three things:

    keeps_memory                  True: a memory is built after each task and replayed in the next ones
    trains_on_seen                True: each task trains on the data of every task so far (the joint upper bound)
    tokens_per_sample(n, share)   how many of a sample's n grid tokens a memory row keeps, given memory.token_fraction
                                  (`share`); None: as many as lets every training sample fit the budget (coretokens)
    families                      the task families it serves (classification, vqa, captioning)

A method of your own is an object with these attributes, e.g. a `MemoryMethod` (the example plugin package in
examples/ has one):

    from tokenforge.continual.methods import MemoryMethod

    class SqrtTokens(MemoryMethod):
        def tokens_per_sample(self, num_positions, token_fraction):
            return max(1, round(num_positions ** 0.5))

    SQRT = SqrtTokens()          # memory.method: "mylab.methods:SQRT", or an entry point in tokenforge.methods
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenforge.errors import TokenforgeError

ALL_FAMILIES = ("classification", "vqa", "captioning")


def keep_count(num_tokens: int, token_fraction: float) -> int:
    """memory.token_fraction of a sample's tokens, rounded, at least one."""
    if not 0 < token_fraction <= 1:
        raise TokenforgeError(f"memory.token_fraction: must be in (0, 1], got {token_fraction}")
    return max(1, int(round(num_tokens * token_fraction)))


@dataclass(frozen=True)
class MemoryMethod:
    """A memory method: keeps a memory of samples, each with `tokens_per_sample` of its tokens (all by default)."""

    keeps_memory: bool = True
    trains_on_seen: bool = False
    families: tuple[str, ...] = ALL_FAMILIES

    def tokens_per_sample(self, num_positions: int, token_fraction: float) -> int | None:
        return num_positions


@dataclass(frozen=True)
class TopTokens(MemoryMethod):
    """coretokenset: the selected samples keep their top memory.token_fraction of tokens by the scorer."""

    def tokens_per_sample(self, num_positions: int, token_fraction: float) -> int | None:
        return keep_count(num_positions, token_fraction)


@dataclass(frozen=True)
class EverySample(MemoryMethod):
    """coretokens: every sample of the task, with as many top tokens each as the budget allows (at least one)."""

    families: tuple[str, ...] = ("classification",)

    def tokens_per_sample(self, num_positions: int, token_fraction: float) -> int | None:
        return None


NONE = MemoryMethod(keeps_memory=False)  # fine-tuning: no memory, the lower bound
CORESET = MemoryMethod()  # whole samples
CORETOKENSET = TopTokens()
CORETOKENS = EverySample()
JOINT = MemoryMethod(keeps_memory=False, trains_on_seen=True)  # every task's data so far, no memory: the upper bound


def memory_method(name: str, family: str = "classification") -> MemoryMethod:
    """The method `name` (a built-in name, an installed plugin's name or an import path), checked for the family."""
    from tokenforge.continual import METHODS

    return METHODS.load_for(name, family, ALL_FAMILIES)
