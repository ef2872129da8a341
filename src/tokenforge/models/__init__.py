"""The models that train on token grids.

- `vit`: TokenViT, a timm VisionTransformer fed with codebook embeddings (or pixel patches), with one forward for
  full grids and position subsets, prefix tokens, visual prompt tuning (`train.prompts`: prompts on a frozen
  backbone), and the probe API that attribution reads attention through;
- `attention`: its blocks and attention (built by timm, same parameters), which take token positions and
  output rows, record attention for the probe, and route attention spans (TRAR, `train.attention: routed`);
- `store`: saving and loading a trained model (safetensors + JSON config);
- `mtm`: masked-token modelling (the pretrain stage's label-free mode) and the filler of replay's `fill: mtm`;
- `timm_import`: a pixel TokenViT from a local timm ViT checkpoint (the pretrain stage's `timm` mode).
"""

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
