"""The classification family's model at the start of a task: task t-1's TokenViT, or for task 0 a seeded one on the
tokenizer's grid or the pretrain stage's backbone (`--init`) with a fresh head; with the flags' model options (routed
attention, visual prompts, token expansion), and the plain fp32 copy of the trained weights that builds the memory
and is saved.

Used by the classification job (families/classification_job.py); the options themselves are models/vit.py's.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tokenforge.continual.fills import fill_spec
from tokenforge.errors import TokenforgeError
from tokenforge.io import read_json
from tokenforge.models.expansion import ExpansionConfig
from tokenforge.models.store import is_tuned
from tokenforge.models.vit import ModelConfig, TokenViT, load_model


def expansion_config(args) -> ExpansionConfig | None:
    """The token expansion schedule of the `--toe-*` flags, or None when it is off."""
    if not args.toe_enabled:
        return None
    return ExpansionConfig(steps=tuple(args.toe_steps), keep=tuple(args.toe_keep), r0=args.toe_r0,
                           chunks=args.toe_chunks, after=args.toe_after)


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
        keep_prompts(model, args)
        return model  # its attention too: train.attention, orders and routing act on task 0 only
    from tokenforge.tokenizer.vq import load_codebook

    tok = read_json(args.tokenizer / "config.json")
    if args.init is not None:  # a pretrained backbone (engine/pretrain.py), a fresh head
        from tokenforge.engine.pretrain import init_from

        codebook = load_codebook(args.tokenizer) if args.input == "tokens" else None
        model = init_from(args.init, num_classes, uses_mask_token(args), codebook, args.input)
        if tuple(model.config.grid) != tuple(tok["grid"]):
            raise TokenforgeError(f"--init {args.init}: a model of grid {model.config.grid}, the tokenizer's is {tuple(tok['grid'])}")
        options = attention_options(args)
        if args.prompt_tokens and any(getattr(model.config, k) != v for k, v in options.items()):
            raise TokenforgeError("train.prompts: a frozen backbone would keep the routers new to the --init model (train.attention "
                                  "routed) at their random start; prompt-tune a routed --init model or global attention")
        return with_prompts(with_attention(model, args), args)
    if args.input == "tokens":
        codebook = load_codebook(args.tokenizer)
        sizes = {"codebook_size": codebook.shape[0], "code_dim": codebook.shape[1]}
    else:  # the same grid as the tokens: one patch of downsample x downsample pixels per token
        codebook = None
        sizes = {"codebook_size": 0, "code_dim": tok["downsample"] ** 2 * tok["channels"], "patch": tok["downsample"]}
    arch = {name: getattr(args, name) for name in ("embed_dim", "depth", "num_heads", "mlp_ratio")}
    config = ModelConfig(
        grid=tuple(tok["grid"]), input=args.input, **sizes, num_classes=num_classes, **arch, mask_token=uses_mask_token(args),
        **attention_options(args),
    )  # fmt: skip
    return TokenViT(config, codebook)


def attention_options(args) -> dict:
    """The ModelConfig fields of --attention, --orders and --routing; none for global attention, so a global model's
    config (and model.json) is what it was before routed attention existed."""
    if args.attention == "global":
        return {}
    return {"attention": args.attention, "orders": tuple(args.orders), "routing": args.routing}


def with_attention(model: TokenViT, args) -> TokenViT:
    """A pretrained start (--init) with the attention of the flags: routed, its weights load into everything but the
    new routers, which start fresh (seeded)."""
    options = attention_options(args)
    if not options or all(getattr(model.config, k) == v for k, v in options.items()):
        return model
    routed = TokenViT(replace(model.config, **options), getattr(model, "codebook", None))
    try:
        missing, unexpected = routed.load_state_dict(model.state_dict(), strict=False)
    except RuntimeError as exc:  # a routed start with other orders: router shapes differ
        raise TokenforgeError(f"--init {args.init}: weights do not fit this routed model ({str(exc).splitlines()[-1].strip()})") from None
    if unexpected or any(".attn.router." not in k for k in missing):
        raise TokenforgeError(f"--init {args.init}: weights do not fit a routed model ({(unexpected + missing)[0]})")
    return routed


def prompt_options(args) -> dict:
    """The ModelConfig fields of --prompt-tokens, --prompt-deep and --prompt-dropout (all off while tokens is 0)."""
    if not args.prompt_tokens:
        return {"prompt_tokens": 0, "prompt_deep": False, "prompt_dropout": 0.0}
    return {"prompt_tokens": args.prompt_tokens, "prompt_deep": bool(args.prompt_deep), "prompt_dropout": float(args.prompt_dropout)}


def with_prompts(model: TokenViT, args) -> TokenViT:
    """A pretrained start (--init) with the prompts of the flags: its weights, seeded fresh prompts, frozen backbone."""
    options = prompt_options(args)
    if all(getattr(model.config, k) == v for k, v in options.items()):
        return model
    prompted = TokenViT(replace(model.config, **options), getattr(model, "codebook", None))
    state = {k: v for k, v in model.state_dict().items() if "prompt" not in k}
    missing, unexpected = prompted.load_state_dict(state, strict=False)
    if unexpected or any("prompt" not in k for k in missing):
        raise TokenforgeError(f"--init {args.init}: weights do not fit a prompted model ({(unexpected + missing)[0]})")
    return prompted


def keep_prompts(model: TokenViT, args) -> None:
    """Task t > 0: the flags' prompts must be task t-1's (train.prompts is set at task 0); the dropout is the flags'."""
    options, config = prompt_options(args), model.config

    def said(tokens: int, deep: bool) -> str:
        return f"{tokens} {'deep' if deep else 'shallow'} prompt tokens" if tokens else "no prompt tokens"

    if (config.prompt_tokens, config.prompt_deep) != (options["prompt_tokens"], options["prompt_deep"]):
        raise TokenforgeError(f"--previous {args.previous}: a model with {said(config.prompt_tokens, config.prompt_deep)}, the flags "
                              f"ask for {said(options['prompt_tokens'], options['prompt_deep'])} (train.prompts is set at task 0)")
    if config.prompt_tokens:
        model.config = replace(config, prompt_dropout=options["prompt_dropout"])
        model.prompt_dropout.p = options["prompt_dropout"]


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
