"""Train the VQ tokenizer: a small convolutional VQ autoencoder that turns an image into a grid of code ids.

  tokenforge tokenizer --shards results/shard --out results/tokenizer --codebook-size 64 --downsample 2

The encoder shrinks the image by --downsample with stride-2 convolutions to a grid of --code-dim vectors; a
`vector_quantize_pytorch.VectorQuantize` layer (EMA codebook, k-means init, dead-code restarts) replaces
each vector by its nearest codebook entry; a mirrored decoder rebuilds the image. Loss: pixel MSE plus the
VQ commitment loss. It trains on the shards' train split and reports reconstruction PSNR on the test split.

After training, the codebook is pruned to the codes that encoding the train split actually uses (SeiT pruned
8192 -> 391), in ascending order of their trained id, and ids are renumbered 0..K'-1: `encode` picks the
nearest kept code and returns its new id, `decode` and `codebook` take new ids. --no-prune keeps every code.

Writes into --out: model.safetensors (weights, with the kept codes' trained ids as the `kept_codes` buffer),
config.json (shape of the model; "codebook_size" is the pruned K' every later stage sees,
"trained_codebook_size" the K it was trained with), codebook.safetensors ({"codebook": (K', code_dim)
float32}, read by `load_codebook`), reconstructions.png (up to 16 test images by key above their
reconstructions) and stats.json (mse, psnr, codebook usage, used codes, perplexity, wall_s). Later stages call
`load_tokenizer(dir)` and its `encode`/`decode`, or just `load_codebook(dir)`.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tokenforge.errors import TokenforgeError
from tokenforge.io import atomic_dir, write_json

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, required=True, help="directory written by `tokenforge shard`")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the trained tokenizer")
    parser.add_argument("--codebook-size", type=int, default=64, help="number of codes (vocabulary size)")
    parser.add_argument("--code-dim", type=int, default=16, help="dimension of each codebook vector")
    parser.add_argument("--hidden-dim", type=int, default=64, help="channels of the conv encoder and decoder")
    parser.add_argument(
        "--downsample", type=int, default=2, help="image pixels per token side; a power of 2 dividing the image size"
    )
    parser.add_argument("--epochs", type=int, default=30, help="passes over the train split")
    parser.add_argument("--batch-size", type=int, default=128, help="images per optimiser step")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    parser.add_argument("--commitment", type=float, default=0.25, help="weight of the VQ commitment loss")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, k-means init and batch order")
    parser.add_argument(
        "--prune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep only the codes used on the train split and renumber them 0..K'-1 (--no-prune keeps all)",
    )


def run(args: argparse.Namespace, tracker) -> None:
    from tokenforge.tokenizer.train import (
        load_splits,
        prune_to_used,
        psnr,
        reconstruction_mse,
        save_reconstruction_grid,
        train_tokenizer,
    )
    from tokenforge.tokenizer.vq import make_config, save_tokenizer

    start = time.perf_counter()
    train, test = load_splits(args.shards)
    if len(train.keys) == 0:
        raise TokenforgeError(f"{args.shards}: the train split has no images")
    _, height, width, channels = train.images.shape
    config = make_config(
        (height, width), channels, args.downsample, args.codebook_size, args.code_dim, args.hidden_dim, args.seed
    )
    hyper = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "commitment": args.commitment}
    tracker.log_params({**config, **hyper, "prune": args.prune})
    model, losses = train_tokenizer(train.images, config, **hyper, tracker=tracker)
    usage = prune_to_used(model, train.images, args.prune)
    eval_set = test if test is not None else train
    mse = reconstruction_mse(model, eval_set.images)  # with the pruned codebook: what later stages get
    stats = {
        "mse": mse,
        "psnr": psnr(mse),
        "eval_split": "test" if test is not None else "train",
        **usage,
        "epochs": args.epochs,
        "final_loss": losses[-1],
    }
    with atomic_dir(args.out) as tmp:
        save_tokenizer(model, tmp)
        save_reconstruction_grid(model, eval_set, tmp / "reconstructions.png")
        stats["wall_s"] = time.perf_counter() - start
        write_json(tmp / "stats.json", stats)
    tracker.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    for name in ("config.json", "stats.json", "reconstructions.png"):
        tracker.log_artifact(args.out / name)
    log.info(
        "tokenizer: psnr %.2f dB, %d of %d codes used (kept %d)",
        stats["psnr"], stats["used_codes"], stats["trained_codebook_size"], stats["codebook_size"],
    )
