r"""Train TokenAdapt (SeiT++): a frozen pair f, g that lets pixel-style spatial augmentations act on token grids.

  tokenforge tokenadapt --shards results/shard --tokenizer results/tokenizer --out results/tokenadapt
  tokenforge train ... --augment-tokenadapt-p 1.0 --adapter results/tokenadapt

f turns a token grid into a map of twice its resolution (codebook lookup of the tokenizer's raw codebook ->
Linear(code_dim -> width) + 2-D sin-cos positions -> one pre-LN transformer block with a Tanh MLP -> LayerNorm ->
ConvTranspose2d k2 s2); g maps such a map back to code logits (Conv2d k2 s2 + positions -> one block ->
LayerNorm -> Linear(width -> codes)). Trained on the shards' train images I: for each batch, per-sample spatial
transforms A (horizontal flip p 0.5; with p 0.5 a chain of rotation +-30 deg, translation +-0.2, x-shear +-15 deg,
each p 0.5; random resized crop of area 0.08-1; --identity-p of the samples get none) are applied to the pixels
and, in the same relative coordinates, to f's map; the loss is cross-entropy of g(A(f(Tok(I)))) against
Tok(A(I)), the VQ encoder's codes of the transformed image.

Writes into --out: adapter.safetensors (weights and the raw codebook), config.json (sizes, the codebook's
sha256 and shape, settings, statistics) and stats.json: per-epoch loss and, on a held-out share (--holdout) of
the train images, the token accuracy of argmax g(A(f(z))) against Tok(A(I)), of the trivial baseline (A applied
to the id grid by nearest neighbour), and of the identity reconstruction argmax g(f(z)) against z.
`tokenforge train --adapter DIR --augment-tokenadapt-p P` uses it on half of each batch.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tokenforge.io import atomic_dir, write_json

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, required=True, help="directory written by `tokenforge shard` (train split)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="directory written by `tokenforge tokenizer`")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the adapter")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the train images")
    parser.add_argument("--batch-size", type=int, default=64, help="images per optimiser step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--width", type=int, default=128, help="width W of f and g (a multiple of 4; official 384)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of each block (official 6)")
    parser.add_argument("--mlp-ratio", type=float, default=4.0, help="MLP hidden size / width")
    parser.add_argument("--identity-p", type=float, default=0.25, help="share of samples trained without any transform")
    parser.add_argument("--holdout", type=float, default=0.1, help="share of the train images held out to measure it")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batch order and transforms")


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.data.shards import load_split
    from tokenforge.tokenizer.adapt import AdapterConfig, save_adapter
    from tokenforge.tokenizer.adapt_train import train_adapter
    from tokenforge.tokenizer.encode import check_images
    from tokenforge.tokenizer.vq import load_tokenizer

    start = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer)
    tok = tokenizer.config
    config = AdapterConfig(tok["codebook_size"], tok["code_dim"], tuple(tok["grid"]), args.width, args.heads, args.mlp_ratio)
    train = load_split(args.shards, "train")
    check_images(train.images, tok, args)
    hyper = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "identity_p": args.identity_p,
             "holdout": args.holdout, "seed": args.seed}
    tracker.log_params({"width": args.width, "heads": args.heads, "mlp_ratio": args.mlp_ratio, **hyper})
    adapter, stats = train_adapter(tokenizer, train.images, config, **hyper, tracker=tracker)
    stats["wall_s"] = time.perf_counter() - start
    tokenizer_info = {"codebook_shape": [tok["codebook_size"], tok["code_dim"]], "grid": list(tok["grid"]),
                      "downsample": tok["downsample"], "image_size": list(tok["image_size"])}
    with atomic_dir(args.out) as tmp:
        save_adapter(adapter, tmp, {"tokenizer": tokenizer_info, "training": hyper, "stats": stats})
        write_json(tmp / "stats.json", stats)
    tracker.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    tracker.log_artifact(args.out / "stats.json")
    log.info(
        "tokenadapt: held-out token accuracy %.3f adapted vs %.3f nearest-neighbour baseline; identity %.3f",
        stats["adapted_accuracy"], stats["nearest_baseline_accuracy"], stats["identity_accuracy"],
    )
