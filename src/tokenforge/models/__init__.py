"""The models that train on token grids.

- `vit`: TokenViT, a timm VisionTransformer fed with codebook embeddings (or pixel patches), with one forward for
  full grids and position subsets, prefix tokens, and the probe API that attribution reads attention through;
- `attention`: its blocks and attention (built by timm, same parameters), which take token positions and
  output rows, and record attention for the probe;
- `store`: saving and loading a trained model (safetensors + JSON config).
"""

# train.input: what a model reads, VQ code ids or (the baseline) pixel patches of the same grid
INPUTS = ("tokens", "pixels")
