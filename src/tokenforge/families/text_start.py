"""The text families' model at the start of a task: task t-1's BLIP for t > 0; for task 0 a seeded small BLIP on the
tokenizer's grid, a local pretrained BLIP (`--pretrained`), or a small BLIP whose vision encoder starts from the
pretrain stage's model (`--init`).

The pretrain stage for vqa and captioning. `tokenforge pretrain` trains a TokenViT (masked-token modelling on the
token grids, `--mode mtm --data tasks`, or a classifier on another labelled source); task 0 then starts BLIP's
vision side from it: the unit stem (code or patch Linear, class token, position table) and every vision encoder
layer (pre-norm blocks in both: norm, fused qkv attention, projection, norm, GELU MLP) take the ViT's weights, and
BLIP's final vision norm takes the ViT's final norm; the vision layer norms use the ViT's epsilon (1e-6, also in the
saved config), so BLIP's vision encoder computes exactly what the pretrained ViT computes on the same grid. The MTM
predictor and the mask embedding have no place in BLIP and are dropped; the text side starts fresh (seeded). As
for classification, the pretrained model's architecture (width, depth, heads, MLP ratio) replaces the --embed-dim,
--depth, --num-heads and --mlp-ratio flags, for the text layers too (VQA's decoder needs the vision width). Why
this design: the pretrain stage, its rule and its outputs stay one for every family, and the weights map one to one
(the shapes are equal by construction), so nothing is approximated; pretraining BLIP's own vision encoder by MTM
would be a second pretrain loop for the same network.
"""

from __future__ import annotations

import torch

from tokenforge.errors import TokenforgeError

# TokenViT name -> BLIP vision-model name, per encoder layer ("{}" is the layer index)
LAYER_NAMES = {
    "vit.blocks.{}.norm1": "encoder.layers.{}.layer_norm1",
    "vit.blocks.{}.attn.qkv": "encoder.layers.{}.self_attn.qkv",
    "vit.blocks.{}.attn.proj": "encoder.layers.{}.self_attn.projection",
    "vit.blocks.{}.norm2": "encoder.layers.{}.layer_norm2",
    "vit.blocks.{}.mlp.fc1": "encoder.layers.{}.mlp.fc1",
    "vit.blocks.{}.mlp.fc2": "encoder.layers.{}.mlp.fc2",
}


def previous_model(args):
    """Task t-1's BLIP, checked to be of this family and input."""
    from tokenforge.models.blip import BlipModel

    if args.previous is None:
        raise TokenforgeError(f"--previous: required for task {args.task} (task {args.task - 1}'s output)")
    model = BlipModel.load(args.previous)
    if model.settings.task != args.family or model.settings.input != args.input:
        raise TokenforgeError(f"--previous {args.previous}: a {model.settings.task} model on {model.settings.input}, not "
                              f"{args.family} on {args.input}")  # fmt: skip
    return model


def initial_model(args, tok: dict, tokenizer):
    """Task t-1's BLIP for t > 0; for task 0 a seeded small BLIP (from --init's vision weights, or a local pretrained
    one with --pretrained) on the tokenizer's grid. Joint training (memory method joint) without --previous starts
    that fresh BLIP at any task, trained on every task so far at once (the blind control: 65_control.smk)."""
    from tokenforge.families.text import special_ids
    from tokenforge.models.blip import BlipModel, BlipSettings, build_blip

    if args.task > 0 and (args.previous is not None or args.memory_method != "joint"):
        return previous_model(args)
    if args.init is not None and args.pretrained is not None:
        raise TokenforgeError("--init and --pretrained: task 0 starts from one of them (pretrain.mode or multimodal.pretrained)")
    ids = special_ids(tokenizer)
    codebook = None
    if args.input == "tokens":
        from tokenforge.tokenizer.vq import load_codebook

        codebook = load_codebook(args.tokenizer)
    vit = None if args.init is None else pretrained_vit(args, codebook)
    arch = architecture(vit.config if vit is not None else args)
    settings = BlipSettings(
        task=args.family, input=args.input, **arch, vocab_size=len(tokenizer), pad_id=ids["pad"], bos_id=ids["bos"],
        eos_id=ids["eos"], sep_id=ids["eos"], max_text_len=args.text_max_len, grid=list(tok["grid"]),
        num_codes=int(codebook.shape[0]) if codebook is not None else 0, code_dim=int(codebook.shape[1]) if codebook is not None else 0,
        patch_features=tok["downsample"] ** 2 * tok["channels"], pretrained=str(args.pretrained) if args.pretrained else None,
        blind=bool(getattr(args, "blind", False)),
    )  # fmt: skip
    if args.pretrained is not None:  # its text side expects its own tokenizer: multimodal.text_tokenizer
        return BlipModel.from_pretrained(args.pretrained, settings, codebook)
    model = build_blip(settings, codebook, seed=args.seed)
    if vit is not None:
        vision_from(model, vit, args.init)
    return model


def architecture(source) -> dict:
    """BLIP's size from the flags (--embed-dim, --depth, ...) or from a pretrained ViT's config: the same names."""
    return {"width": source.embed_dim, "vision_layers": source.depth, "text_layers": source.depth,
            "heads": source.num_heads, "mlp_ratio": source.mlp_ratio}  # fmt: skip


def pretrained_vit(args, codebook):
    """The pretrain stage's TokenViT (`--init`), checked against the run's input, tokenizer and grid."""
    from tokenforge.models.vit import load_model, standardised

    vit = load_model(args.init)
    config = vit.config
    if config.input != args.input:
        raise TokenforgeError(f"--init {args.init}: a pretrained model of input {config.input!r}, not {args.input!r}")
    if codebook is not None and not torch.equal(standardised(codebook), vit.codebook):
        raise TokenforgeError(f"--init {args.init}: pretrained with another tokenizer (codebooks differ)")
    if config.prompts or config.prompt_tokens or config.attention != "global":
        raise TokenforgeError(f"--init {args.init}: a ViT with register tokens, prompts or routed attention has no BLIP counterpart")
    return vit


@torch.no_grad()
def vision_from(model, vit, where) -> None:
    """BLIP's unit stem and vision encoder from a TokenViT's weights (module doc); shapes must match."""
    vision, source = model.hf.vision_model, vit.state_dict()
    target = vision.state_dict()
    pairs = {"vit.cls_token": "embeddings.class_embedding", "vit.pos_embed": "embeddings.position_embedding",
             "vit.norm.weight": "post_layernorm.weight", "vit.norm.bias": "post_layernorm.bias"}  # fmt: skip
    for layer in range(vit.config.depth):
        for old, new in LAYER_NAMES.items():
            pairs |= {f"{old.format(layer)}.{p}": f"{new.format(layer)}.{p}" for p in ("weight", "bias")}
    weight = source["vit.patch_embed.proj.weight"].flatten(1)  # a 1x1 convolution: the Linear of the stem
    updates = {"embeddings.proj.weight": weight, "embeddings.proj.bias": source["vit.patch_embed.proj.bias"]}
    updates |= {new: source[old] for old, new in pairs.items()}
    for name, value in updates.items():
        if name not in target or tuple(target[name].shape) != tuple(value.shape):
            raise TokenforgeError(f"--init {where}: {name} of shape {tuple(value.shape)} does not fit BLIP's vision encoder")
        target[name].copy_(value)
    if model.settings.input == "pixels":  # the ViT reads patches scaled to [0, 1], not normalised: the same input
        vision.embeddings.pixel_mean.zero_()
        vision.embeddings.pixel_std.fill_(1.0)
    eps = vit.vit.norm.eps
    model.hf.config.vision_config.layer_norm_eps = eps  # saved with the model, so a reload builds the same norms
    for module in vision.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = eps
