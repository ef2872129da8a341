"""The models that train on token grids.

- `vit`: TokenViT, a timm VisionTransformer fed with codebook embeddings (or pixel patches), with one forward for
  full grids and position subsets, prefix tokens, and the probe API that attribution reads attention through;
- `attention`: its blocks and attention (built by timm, same parameters), which take token positions and
  output rows, and record attention for the probe;
- `store`: saving and loading a trained model (safetensors + JSON config);
- `mtm`: masked-token modelling (the pretrain stage's label-free mode) and the filler of replay's `fill: mtm`;
- `timm_import`: a pixel TokenViT from a local timm ViT checkpoint (the pretrain stage's `timm` mode).
"""

# train.input: what a model reads, VQ code ids or (the baseline) pixel patches of the same grid
INPUTS = ("tokens", "pixels")
# train.head: task t > 0 keeps task t-1's classifier head, or starts from a fresh one (the paper re-initialises it)
HEADS = ("keep", "reset")
