"""Visual prompt tuning (VPT) as a model option: `--prompt-tokens`, `--prompt-deep`, `--prompt-dropout`
(train.prompts). Learned prompt tokens after the class token train with the head, everything else frozen; TokenViT
builds the prompts from its config (`prompt_tokens`, `prompt_deep`, `prompt_dropout`). Task 0 needs a backbone from
`--init`; later tasks keep task 0's prompts."""

from __future__ import annotations

import argparse
from dataclasses import replace

from tokenforge.errors import TokenforgeError
from tokenforge.models.options.base import ModelOption


def prompt_options(args: argparse.Namespace) -> dict:
    """The ModelConfig fields of --prompt-tokens, --prompt-deep and --prompt-dropout (all off while tokens is 0)."""
    if not args.prompt_tokens:
        return {"prompt_tokens": 0, "prompt_deep": False, "prompt_dropout": 0.0}
    return {"prompt_tokens": args.prompt_tokens, "prompt_deep": bool(args.prompt_deep), "prompt_dropout": float(args.prompt_dropout)}


class Prompts(ModelOption):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        vpt = parser.add_argument_group(
            "visual prompt tuning (VPT, train.prompts; see tokenforge.models.tokenvit): learned prompt tokens after the "
            "class token train with the head, everything else frozen (and in eval mode); task 0 needs --init, later "
            "tasks keep task 0's prompt settings"
        )
        vpt.add_argument("--prompt-tokens", type=int, default=0, metavar="N", help="prompt tokens per set (0: off)")
        vpt.add_argument(
            "--prompt-deep",
            action=argparse.BooleanOptionalAction,
            default=False,
            help="deep: a new set of N prompts replaces them before every block (depth sets in all); shallow: one set at the input",
        )
        vpt.add_argument("--prompt-dropout", type=float, default=0.0, metavar="P", help="dropout on the prompt tokens while training, in [0, 1)")

    def check(self, args: argparse.Namespace) -> None:
        if args.prompt_tokens < 0 or not 0 <= args.prompt_dropout < 1:
            raise TokenforgeError(f"train.prompts: tokens >= 0 and dropout in [0, 1), got {args.prompt_tokens} and {args.prompt_dropout}")
        if args.prompt_tokens and args.task == 0 and args.init is None:
            raise TokenforgeError("train.prompts: prompt tuning trains prompts on a frozen backbone; task 0 needs one from --init (pretrain)")

    def start(self, model, args: argparse.Namespace):
        """A pretrained start (--init) with the prompts of the flags: its weights, seeded fresh prompts, frozen backbone."""
        from tokenforge.models.tokenvit import TokenViT

        options = prompt_options(args)
        if all(getattr(model.config, k) == v for k, v in options.items()):
            return model
        prompted = TokenViT(replace(model.config, **options), getattr(model, "codebook", None))
        state = {k: v for k, v in model.state_dict().items() if "prompt" not in k}
        missing, unexpected = prompted.load_state_dict(state, strict=False)
        if unexpected or any("prompt" not in k for k in missing):
            raise TokenforgeError(f"--init {args.init}: weights do not fit a prompted model ({(unexpected + missing)[0]})")
        return prompted

    def continue_from(self, model, args: argparse.Namespace) -> None:
        """Task t > 0: the flags' prompts must be task t-1's (train.prompts is set at task 0); the dropout is the flags'."""
        options, config = prompt_options(args), model.config

        def said(tokens: int, deep: bool) -> str:
            return f"{tokens} {'deep' if deep else 'shallow'} prompt tokens" if tokens else "no prompt tokens"

        if (config.prompt_tokens, config.prompt_deep) != (options["prompt_tokens"], options["prompt_deep"]):
            raise TokenforgeError(f"--previous {args.previous}: a model with {said(config.prompt_tokens, config.prompt_deep)}, the "
                                  f"flags ask for {said(options['prompt_tokens'], options['prompt_deep'])} (train.prompts is set at task 0)")
        if config.prompt_tokens:
            model.config = replace(config, prompt_dropout=options["prompt_dropout"])
            model.prompt_dropout.p = options["prompt_dropout"]


PROMPTS = Prompts()
