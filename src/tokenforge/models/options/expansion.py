"""Token expansion (ToE) as a model option: `--toe-*` (train.token_expansion). While training, the blocks after
`--toe-after` see a growing share of the tokens, the others merged into them; evaluation, memory building and the
probe see all of them (models/expansion.py has the method)."""

from __future__ import annotations

import argparse

from tokenforge.models.expansion import ExpansionConfig
from tokenforge.models.options.base import ModelOption


def expansion_config(args: argparse.Namespace) -> ExpansionConfig | None:
    """The token expansion schedule of the `--toe-*` flags, or None when it is off."""
    if not args.toe_enabled:
        return None
    return ExpansionConfig(steps=tuple(args.toe_steps), keep=tuple(args.toe_keep), r0=args.toe_r0,
                           chunks=args.toe_chunks, after=args.toe_after)  # fmt: skip


class TokenExpansion(ModelOption):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        toe = parser.add_argument_group(
            "token expansion (ToE, train.token_expansion; see tokenforge.models.expansion): while training, the blocks "
            "after --toe-after see a growing share of the tokens, the others merged into them; evaluation sees all"
        )
        default = ExpansionConfig()
        toe.add_argument("--toe-enabled", action=argparse.BooleanOptionalAction, default=False, help="turn token expansion on")
        toe.add_argument("--toe-steps", type=int, nargs="+", default=list(default.steps), metavar="EPOCH",
                         help="epochs of each task (from 0, increasing) at which the stages start; before the first, all tokens")
        toe.add_argument("--toe-keep", type=float, nargs="+", default=list(default.keep), metavar="RATE",
                         help="share of the tokens each stage keeps, one per step, non-decreasing in (0, 1]; a stage at 1.0 keeps all")
        toe.add_argument("--toe-r0", type=float, default=default.r0, metavar="SHARE",
                         help="share of seed tokens (fixed raster indices), in (0, keep[0]]")
        toe.add_argument("--toe-chunks", type=int, default=default.chunks, metavar="K",
                         help="chunks in which each stage's most novel tokens join")
        toe.add_argument("--toe-after", type=int, default=default.after, metavar="BLOCK",
                         help="thin the output of this block (0-based; below the last)")  # fmt: skip

    def check(self, args: argparse.Namespace) -> None:
        expansion_config(args)  # its settings fail now, the depth check once the model is there

    def training(self, model, args: argparse.Namespace) -> None:
        model.set_expansion(expansion_config(args))  # training only: the plain copy that builds the memory has it off


TOKEN_EXPANSION = TokenExpansion()
