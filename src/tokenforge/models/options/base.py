"""What a model option of the token ViT is: the hooks the CLI and the classification job call on every option.

The training job (families/vit_start.py, families/classification_job.py) and `tokenforge train`'s parser call each
option of `tokenforge.models.MODEL_OPTIONS` in registration order; an option acts only when its flags turn it on.

    add_arguments(parser)        its `tokenforge train` flags, as an argument group
    check(args)                  one-line TokenforgeErrors for flag values that cannot work (before any data is read)
    config_fields(args) -> dict  the ModelConfig fields a new task-0 model gets from the flags (none while off, so a
                                 plain model's model.json stays what it was)
    start(model, args) -> model  a pretrained start (`--init`) takes the option on: usually a model rebuilt with the
                                 option's fields and the start's weights, the option's new parameters fresh (seeded)
    continue_from(model, args)   task t > 0: check task t-1's model against the flags, or carry a setting over
    training(model, args)        just before training (not evaluation or memory building): training-only settings

A new option is one module here with a `ModelOption` subclass, and one registration in models/__init__.py; the
model-side machinery it needs lives where the model is built (its ModelConfig fields in models/config.py, with their
off values in models/store.py so model.json leaves them out while off) and its config keys in the schema.
"""

from __future__ import annotations

import argparse


class ModelOption:
    """The no-op option: every hook does nothing. Subclasses override what they need."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def check(self, args: argparse.Namespace) -> None:
        pass

    def config_fields(self, args: argparse.Namespace) -> dict:
        return {}

    def start(self, model, args: argparse.Namespace):
        return model

    def continue_from(self, model, args: argparse.Namespace) -> None:
        pass

    def training(self, model, args: argparse.Namespace) -> None:
        pass


def model_options() -> list[ModelOption]:
    """Every registered model option, in registration order (built-ins, then installed plugins' entry points)."""
    from tokenforge.models import MODEL_OPTIONS

    return [MODEL_OPTIONS.load(name) for name in MODEL_OPTIONS.names()]
