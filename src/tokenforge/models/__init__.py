"""The models that train on token grids.

- `options`: the ViT's model options (routed attention, visual prompts, token expansion), one module each behind one
  interface (`options/base.py`), registered in MODEL_OPTIONS below;
- `vit` (`tokenvit`, `config`): TokenViT, a timm VisionTransformer fed with codebook embeddings (or pixel patches), with one forward for
  full grids and position subsets, prefix tokens, visual prompt tuning (`train.prompts`: prompts on a frozen
  backbone), and the probe API that attribution reads attention through;
- `attention`: its blocks and attention (built by timm, same parameters), which take token positions and
  output rows, record attention for the probe, and route attention spans (TRAR, `train.attention: routed`);
- `store`: saving and loading a trained model (safetensors + JSON config);
- `mtm`: masked-token modelling (the pretrain stage's label-free mode) and the filler of replay's `fill: mtm`;
- `timm_import`: a pixel TokenViT from a local timm ViT checkpoint (the pretrain stage's `timm` mode).
"""

from tokenforge.plugins import Registry


def _option_check(obj: object) -> str | None:
    hooks = ("add_arguments", "check", "config_fields", "start", "continue_from", "training", "build")
    missing = [h for h in hooks if not hasattr(obj, h)]
    if isinstance(obj, type) or missing:
        return f"a {type(obj).__name__} without {', '.join(missing or hooks)} (see tokenforge.models.options.base.ModelOption)"
    return None


# The ViT's model options, applied in this order (models/options/): each adds its flags, checks them, and acts on a
# new model, a pretrained start, the previous task's model and training when its flags turn it on.
MODEL_OPTIONS = Registry("model option", key="train", group="tokenforge.model_options", check=_option_check)
MODEL_OPTIONS.register("routed_attention", "tokenforge.models.options.routed:ROUTED_ATTENTION")
MODEL_OPTIONS.register("prompts", "tokenforge.models.options.prompts:PROMPTS")
MODEL_OPTIONS.register("token_expansion", "tokenforge.models.options.expansion:TOKEN_EXPANSION")
MODEL_OPTIONS.register("extra_options", "tokenforge.models.options.extra:EXTRA_OPTIONS")  # --model-option: one's own

# train.input: what a model reads, VQ code ids or (the baseline) pixel patches of the same grid
INPUTS = ("tokens", "pixels")
# train.head: task t > 0 keeps task t-1's classifier head, or starts from a fresh one (the paper re-initialises it)
HEADS = ("keep", "reset")
# train.attention: every token attends to every token (timm's), or TRAR's routed spans: per block a router mixes
# attention restricted to each token's (2o+1)x(2o+1) window for each of train.orders (models.attention)
ATTENTIONS = ("global", "routed")
# train.routing: soft mixes every order's attention by softmax weights (TRAR's default); hard picks one order per
# sample (gumbel-softmax while training, temperature 10 -> 0.1 over each task; argmax at evaluation)
ROUTINGS = ("soft", "hard")
