"""Data in and out: image sources, WebDataset shards, token files, SeiT releases, task splits, token augmentations.

- `sources`: the image sources of the shard stage, one module per reader, looked up by name in `SOURCES`
  (declared here, so that `--help` lists them without importing a reader);
- `multimodal`: the text record that every image of a text-bearing source carries;
- `shards`: write and read the deterministic WebDataset tars and their Parquet index;
- `tokens`: the bit-packed token Parquet files (`TokenSet`, `save_tokens`, `load_tokens`);
- `seit`: import and export SeiT's released token format (`seit_codec`: its byte code, `seit_release`: its files);
- `split`: the class-incremental task sequence;
- `units`: a split's units as models read them (code ids from a token file, or pixel patches from the shards);
- `augment`: token augmentations applied to batches during training; `augment_config` their settings (torch-free,
  so the CLI builds its `--augment-*` flags from them).
"""

from tokenforge.plugins import Registry

# --channels of the shard stage: the PIL image mode of each channel count. Here, not in `shards`, because the
# CLI's choices need it and this file imports nothing heavy, so `--help` stays fast.
MODES = {1: "L", 3: "RGB"}

# Image sources of the shard stage: `reader(path: str | None, options: SourceOptions) -> Source`
# (tokenforge/data/sources/base.py), named by `--source NAME` or `--source NAME:PATH`.
SOURCES = Registry("source", key="shard.source", group="tokenforge.sources")
# Names whose spec is NAME:PATH. Only the help text needs this, and it must not import a reader to find out;
# the readers themselves refuse a missing or an unexpected PATH.
PATH_SOURCES: set[str] = set()


def register_source(name: str, reader: str, *, takes_path: bool) -> None:
    """Register `reader` ("module:function", imported on first use) as source `name`."""
    SOURCES.register(name, reader)
    if takes_path:
        PATH_SOURCES.add(name)


register_source("digits", "tokenforge.data.sources.digits:open_digits", takes_path=False)
register_source("shapes", "tokenforge.data.sources.shapes:open_shapes", takes_path=False)
register_source("imagefolder", "tokenforge.data.sources.imagefolder:open_imagefolder", takes_path=True)
register_source("cifar", "tokenforge.data.sources.cifar:open_cifar", takes_path=True)
register_source("idx", "tokenforge.data.sources.idx:open_idx", takes_path=True)
register_source("scenes", "tokenforge.data.sources.scenes:open_scenes", takes_path=False)
register_source("vqa2", "tokenforge.data.sources.vqa2:open_vqa2", takes_path=True)
register_source("clevr", "tokenforge.data.sources.clevr:open_clevr", takes_path=True)
register_source("coco-captions", "tokenforge.data.sources.coco_captions:open_coco_captions", takes_path=True)


def source_kinds() -> str:
    """The sources a spec may name, for help texts and messages: "digits, ..., imagefolder:PATH, ... or
    coco-captions:PATH" (installed plugins' names included, by name alone: what they take is theirs to say)."""
    kinds = [f"{name}:PATH" if name in PATH_SOURCES else name for name in SOURCES.names()]
    return kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
