"""Data in and out: image sources, WebDataset shards, token files, SeiT releases, task splits, token augmentations.

- `sources`: read digits, shapes, image folders, CIFAR layouts (one `Source` per dataset);
- `shards`: write and read the deterministic WebDataset tars and their Parquet index;
- `tokens`: the bit-packed token Parquet files (`TokenSet`, `save_tokens`, `load_tokens`);
- `seit`: import and export SeiT's released token format;
- `split`: the class-incremental task sequence;
- `units`: a split's units as models read them (code ids from a token file, or pixel patches from the shards);
- `augment`: token augmentations applied to batches during training; `augment_config` their settings (torch-free,
  so the CLI builds its `--augment-*` flags from them).
"""

# --channels of the shard stage: the PIL image mode of each channel count. Here, not in `shards`, because the
# CLI's choices need it and this file imports nothing heavy, so `--help` stays fast.
MODES = {1: "L", 3: "RGB"}
