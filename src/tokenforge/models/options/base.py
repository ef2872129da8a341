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
    build(model, settings)       an option of one's own (`--model-option NAME[=JSON]`, train.model_options): change a
                                 freshly made TokenViT (add modules or parameters, wrap blocks, freeze parts); it runs
                                 whenever the model is made, loading included, so saved models come back the same

A new option is one module with a `ModelOption` subclass that implements `build`, and one registration: in
models/__init__.py, or an installed package's entry point (group `tokenforge.model_options`), or none at all when it
is named by import path (`train.model_options: {"mylab.adapters:ADAPTERS": {"width": 8}}`); its settings are saved in
model.json (`extra_options`). The example plugin package (examples/) has one. The built-in options predate this and
keep their own ModelConfig fields and config keys (models/config.py, the schema), so their model.json is unchanged.

    class Frozen(ModelOption):                    # freeze the first `blocks` blocks
        def build(self, model, settings):
            for block in model.vit.blocks[: settings.get("blocks", 1)]:
                block.requires_grad_(False)
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

    def build(self, model, settings: dict) -> None:
        pass


def model_options() -> list[ModelOption]:
    """Every registered model option, in registration order (built-ins, then installed plugins' entry points)."""
    from tokenforge.models import MODEL_OPTIONS

    return [MODEL_OPTIONS.load(name) for name in MODEL_OPTIONS.names()]
