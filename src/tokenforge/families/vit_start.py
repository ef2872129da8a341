"""The classification family's model at the start of a task: task t-1's TokenViT, or for task 0 a seeded one on the
tokenizer's grid or the pretrain stage's backbone (`--init`) with a fresh head; with the flags' model options (routed
attention, visual prompts, token expansion), and the plain fp32 copy of the trained weights that builds the memory
and is saved.

Used by the classification job (families/classification_job.py); the options themselves are models/options/'s.
"""

from __future__ import annotations

import torch

from tokenforge.continual.fills import fill_spec
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json
from tokenforge.models.options.base import model_options
from tokenforge.models.store import is_tuned
from tokenforge.models.vit import ModelConfig, TokenViT, load_model


def uses_mask_token(args) -> bool:
    return args.memory_view == "fill" and fill_spec(args.memory_fill).mask_token


def initial_model(args, num_classes: int) -> TokenViT:
    """Task t-1's model for t > 0; for task 0 a seeded initialisation on the tokenizer's grid."""
    if args.task > 0:
        if args.previous is None:
            raise TokenforgeError(f"--previous: required for task {args.task} (task {args.task - 1}'s output)")
        model = load_model(args.previous)
        if model.config.input != args.input:
            raise TokenforgeError(f"--previous {args.previous}: a model of input {model.config.input!r}, not {args.input!r}")
        if uses_mask_token(args) and not model.config.mask_token:
            raise TokenforgeError(f"--previous {args.previous}: a model without a mask token; memory.fill mask needs one from task 0")
        if args.head == "reset":  # a fresh head, seeded like everything else in this task
            reset_head(model)
        for option in model_options():  # e.g. prompts: task t-1's must be the flags'; attention acts on task 0 only
            option.continue_from(model, args)
        return model
    from tokenforge.tokenizer.vq import load_codebook

    tok = read_json(args.tokenizer / "config.json")
    if args.init is not None:  # a pretrained backbone (engine/pretrain.py), a fresh head
        from tokenforge.engine.pretrain import init_from

        codebook = load_codebook(args.tokenizer) if args.input == "tokens" else None
        model = init_from(args.init, num_classes, uses_mask_token(args), codebook, args.input)
        if tuple(model.config.grid) != tuple(tok["grid"]):
            raise TokenforgeError(f"--init {args.init}: a model of grid {model.config.grid}, the tokenizer's is {tuple(tok['grid'])}")
        for option in model_options():  # each option the flags turn on, taken on by the pretrained start
            model = option.start(model, args)
        return model
    if args.input == "tokens":
        codebook = load_codebook(args.tokenizer)
        sizes = {"codebook_size": codebook.shape[0], "code_dim": codebook.shape[1]}
    else:  # the same grid as the tokens: one patch of downsample x downsample pixels per token
        codebook = None
        sizes = {"codebook_size": 0, "code_dim": tok["downsample"] ** 2 * tok["channels"], "patch": tok["downsample"]}
    arch = {name: getattr(args, name) for name in ("embed_dim", "depth", "num_heads", "mlp_ratio")}
    options = {k: v for option in model_options() for k, v in option.config_fields(args).items()}
    config = ModelConfig(
        grid=tuple(tok["grid"]), input=args.input, **sizes, num_classes=num_classes, **arch, mask_token=uses_mask_token(args),
        **options,
    )  # fmt: skip
    return TokenViT(config, codebook)


def frozen_backbone(model: TokenViT) -> dict[str, torch.Tensor] | None:
    """A prompted model's frozen tensors (every state-dict entry but the prompts and the head) as training starts,
    copied: the trained model gets them back bit for bit (bf16 training holds only their rounding); None unprompted."""
    if not model.config.prompt_tokens:
        return None
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items() if not is_tuned(k)}


def reset_head(model: TokenViT) -> None:
    """Re-initialise the classifier head as timm initialises it (truncated normal weights, std 0.02; zero bias)."""
    head = model.vit.head
    with torch.no_grad():
        torch.nn.init.trunc_normal_(head.weight, std=0.02)
        torch.nn.init.zeros_(head.bias)


def plain_model(module, device, frozen: dict[str, torch.Tensor] | None = None) -> TokenViT:
    """The trained weights in a fresh fp32 model on `device`, in eval mode: memory building and saving see the same
    model whatever the training precision, and without activation checkpointing or DeepSpeed's hooks.

    `frozen` (`frozen_backbone` before training): a prompted model's frozen tensors, checked to be what the engine
    still holds (themselves, or their bf16 rounding) and taken from there, bit for bit."""
    held_state = module.state_dict()
    state = {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in held_state.items()}
    for name, start in (frozen or {}).items():
        held = held_state[name].detach().cpu()
        if not torch.equal(held, start.to(held.dtype)):
            raise TokenforgeError(f"prompt tuning: the frozen backbone changed in training ({name})")
        state[name] = start
    plain = TokenViT(module.config, state.get("codebook"))
    plain.load_state_dict(state)
    return plain.to(device).eval()
