"""Model options of one's own, by name or import path: `--model-option NAME[=JSON]` (train.model_options:
{NAME: {settings}}). Each names a `ModelOption` (an installed plugin's entry point in `tokenforge.model_options`, or
"package.module:OBJECT") whose `build(model, settings)` changes a freshly made TokenViT: adds modules or parameters,
wraps blocks, freezes parts. The names and settings are saved in model.json (`extra_options`), so a saved model is
rebuilt with them before its weights load; task 0 sets them, later tasks keep them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from tokenforge.errors import TokenforgeError
from tokenforge.models.options.base import ModelOption

FLAG = "--model-option"


def parse(text: str) -> tuple[str, dict]:
    """"NAME" or "NAME=JSON-object" -> (name, settings); a one-line error otherwise."""
    name, sep, raw = text.partition("=")
    try:
        settings = json.loads(raw) if sep else {}
    except json.JSONDecodeError as exc:
        raise TokenforgeError(f"train.model_options: settings of {name!r} are not JSON ({exc.msg}): {raw!r}") from None
    if not name or not isinstance(settings, dict):
        raise TokenforgeError(f"train.model_options: {text!r} is not NAME or NAME={{json object}}")
    return name, settings


def wanted(args: argparse.Namespace) -> dict:
    """{name: settings} of the --model-option flags, in the order given."""
    return dict(parse(text) for text in (getattr(args, "model_option", None) or []))


class ExtraOptions(ModelOption):
    """The --model-option flag and what it does to a new model, a pretrained start and the previous task's model."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("model options of your own (train.model_options; tokenforge.models.options)")
        group.add_argument(FLAG, action="append", default=[], metavar="NAME[=JSON]",
                           help="a ModelOption by entry-point name or import path (package.module:OBJECT) whose build(model, "
                           "settings) changes the ViT as it is made, with its settings as a JSON object; repeatable; task 0 "
                           "sets them, later tasks keep them")  # fmt: skip

    def check(self, args: argparse.Namespace) -> None:
        from tokenforge.models import MODEL_OPTIONS

        for name in wanted(args):
            if name in MODEL_OPTIONS.builtin_names():
                raise TokenforgeError(f"train.model_options: {name!r} is a built-in option with flags of its own")
            MODEL_OPTIONS.load(name, "train.model_options")

    def config_fields(self, args: argparse.Namespace) -> dict:
        options = wanted(args)
        return {"extra_options": options} if options else {}

    def start(self, model, args: argparse.Namespace):
        """A pretrained start (--init) rebuilt with the flags' options: its weights load, the options' new
        parameters start fresh (seeded)."""
        from tokenforge.models.tokenvit import TokenViT

        options = wanted(args)
        if model.config.extra_options == options:
            return model
        rebuilt = TokenViT(replace(model.config, extra_options=options), getattr(model, "codebook", None))
        _, unexpected = rebuilt.load_state_dict(model.state_dict(), strict=False)
        if unexpected:
            raise TokenforgeError(f"--init {args.init}: weights the model options do not keep ({unexpected[0]})")
        return rebuilt

    def continue_from(self, model, args: argparse.Namespace) -> None:
        options = wanted(args)
        if model.config.extra_options != options:
            raise TokenforgeError(f"--previous {args.previous}: a model with model options {model.config.extra_options or 'none'}, "
                                  f"the flags ask for {options or 'none'} (train.model_options is set at task 0)")


EXTRA_OPTIONS = ExtraOptions()
