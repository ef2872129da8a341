r"""Pretrain a start for task 0: supervised on disjoint data, masked-token modelling, or a local timm checkpoint.

  tokenforge pretrain --mode supervised --data heldout --tokens tokens/train.parquet --split split/ \
      --tokenizer tokenizer/ --out pretrain/
  tokenforge pretrain --mode mtm --data idx:/usr/share/datasets/fashion-mnist --tokenizer tokenizer/ --out pretrain/
  tokenforge pretrain --mode timm --input pixels --timm-model vit_base_patch16_224 \
      --timm-checkpoint ~/weights/vit_b16.safetensors --tokenizer tokenizer/ --out pretrain/

Writes model.safetensors + model.json (a TokenViT on the tokenizer's grid), stats.json, and for mtm the
predictor mtm_head.safetensors. `tokenforge train --task 0 --init pretrain/` starts from it: classification with a
fresh head, vqa and captioning with BLIP's unit stem and vision encoder taken from it (tokenforge.families.text_start);
`--memory-fill mtm --fill-model pretrain/` replays whole grids whose missing tokens the MTM model predicts.
The data (--data): heldout (the run's train samples of classes the split leaves out; not for a vqa or captioning
split, which leaves none out), a source spec (another dataset, encoded by the run's tokenizer), or tasks (mtm only:
the sequence's own images, labels or text unused; not disjoint). See tokenforge.engine.pretrain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenforge.engine import PRETRAIN_MODES
from tokenforge.models import INPUTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--mode", choices=PRETRAIN_MODES[1:], required=True, help="supervised | mtm (label-free masked-token modelling) | timm (pixels)")
    data.add_argument("--input", choices=INPUTS, default="tokens", help="what the model reads (as `tokenforge train --input`)")
    data.add_argument(
        "--data",
        default="heldout",
        help="heldout (train samples of classes outside the split's tasks; needs --split), tasks (mtm only; the "
        "sequence's images, labels unused), or a source spec such as shapes or idx:/path (encoded by the tokenizer)",
    )
    data.add_argument("--max-per-class", type=int, default=None, help="source data: keep the first N train images per class")
    data.add_argument("--tokens", type=Path, default=None, help="the run's train token Parquet (data heldout/tasks, input tokens)")
    data.add_argument("--shards", type=Path, default=None, help="the run's shard directory (data heldout/tasks, input pixels)")
    data.add_argument("--split", type=Path, default=None, help="the run's split directory (data heldout/tasks)")
    data.add_argument("--tokenizer", type=Path, required=True, help="the run's tokenizer directory (grid, codebook, image size)")
    data.add_argument("--out", type=Path, required=True, help="output directory")
    opt = parser.add_argument_group("training (supervised, mtm)")
    opt.add_argument("--epochs", type=int, default=30, help="epochs over the pretrain data")
    opt.add_argument("--batch-size", type=int, default=64, help="batch size")
    opt.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (linear warm-up, cosine decay)")
    opt.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    opt.add_argument("--warmup-epochs", type=float, default=1.0, help="warm-up length in epochs")
    opt.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and masking")
    opt.add_argument("--embed-dim", type=int, default=64, help="ViT width (the task models inherit the architecture)")
    opt.add_argument("--depth", type=int, default=4, help="ViT blocks")
    opt.add_argument("--num-heads", type=int, default=4, help="attention heads")
    opt.add_argument("--mlp-ratio", type=float, default=2.0, help="MLP hidden size / width")
    mtm = parser.add_argument_group("masked-token modelling (mtm)")
    mtm.add_argument("--mask-mean", type=float, default=0.45, help="mean of the per-batch mask ratio (SeiT++: 0.45)")
    mtm.add_argument("--mask-std", type=float, default=0.25, help="std of the mask ratio before truncation (SeiT++: 0.25)")
    mtm.add_argument("--mask-range", type=float, nargs=2, default=(0.4, 1.0), metavar=("LOW", "HIGH"), help="truncation of the mask ratio")
    tm = parser.add_argument_group("timm weights (timm, input pixels)")
    tm.add_argument("--timm-model", default=None, help="timm model name, e.g. vit_base_patch16_224 (its patch size must be the tokenizer's downsample)")
    tm.add_argument("--timm-checkpoint", type=Path, default=None, help="local weights: .safetensors or a weights-only torch file")
    tm.add_argument(
        "--timm-kwargs",
        default=None,
        metavar="JSON",
        help='keyword arguments of timm.create_model for the checkpoint\'s architecture, e.g. \'{"img_size": 384}\'',
    )


def run(args, tracker) -> None:
    from tokenforge.engine.pretrain import pretrain

    pretrain(args, tracker)
