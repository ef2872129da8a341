"""A memory method: each kept sample stores round(sqrt(n)) of its n grid tokens (4 of 16, 14 of 196).

Fewer tokens per sample than a core tokenset at half the tokens, so more samples fit the same byte budget; which
samples come first (memory.selection) and which tokens (memory.scorer) stay the config's choice.
"""

from dataclasses import dataclass

from tokenforge.continual.methods import MemoryMethod


@dataclass(frozen=True)
class SqrtTokens(MemoryMethod):
    def tokens_per_sample(self, num_positions: int, token_fraction: float) -> int:
        return max(1, round(num_positions**0.5))


SQRT_TOKENS = SqrtTokens()
