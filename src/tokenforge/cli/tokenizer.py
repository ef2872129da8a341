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
reconstructions) and stats.json (mse, psnr, codebook usage, used codes, perplexity, wall_s; on scenes also
scene_color_recovery: the share of the objects whose colour the reconstruction keeps, beside
scene_color_recovery_original, the same check on the images themselves). Later stages call
`load_tokenizer(dir)` and its `encode`/`decode`, or just `load_codebook(dir)`.

--pretrained DIR takes a local diffusers VQModel folder (save_pretrained layout: LDM's VQ-f4/f8/f16, VQGAN
conversions, aMUSEd's VQ) as the tokenizer instead of training one (tokenforge/tokenizer/pretrained.py): the
training options are ignored, nothing is downloaded, and the codebook is pruned, measured and written as above,
with a float32 copy of its weights in model.safetensors, so the folder needs DIR no more.
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
    parser.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        metavar="DIR",
        help="use this local diffusers VQModel folder (save_pretrained layout) instead of training a tokenizer",
    )
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
        "--max-images",
        type=int,
        default=20000,
        help="train on a seeded sample of at most N train images streamed from the shards (and measure on at most "
        "N test images), so the stage's memory and time do not grow with the dataset; all when there are fewer",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto: the job's GPU where CUDA is there, else the CPU; or a torch device such as cpu, cuda:0",
    )
    parser.add_argument(
        "--prune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep only the codes used on the train split and renumber them 0..K'-1 (--no-prune keeps all)",
    )


def run(args: argparse.Namespace, tracker) -> None:
    if args.pretrained is not None:
        return run_pretrained(args, tracker)
    from tokenforge.runtime import job_device
    from tokenforge.tokenizer.train import load_splits, prune_to_used, train_tokenizer
    from tokenforge.tokenizer.vq import make_config

    start = time.perf_counter()
    train, test = load_splits(args.shards, args.max_images, args.seed)
    if len(train.keys) == 0:
        raise TokenforgeError(f"{args.shards}: the train split has no images")
    _, height, width, channels = train.images.shape
    config = make_config(
        (height, width), channels, args.downsample, args.codebook_size, args.code_dim, args.hidden_dim, args.seed
    )
    hyper = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "commitment": args.commitment}
    tracker.log_params({**config, **hyper, "prune": args.prune, "max_images": args.max_images, "images": len(train.keys)})
    device = job_device(args.device)
    model, losses = train_tokenizer(train.images, config, **hyper, tracker=tracker, device=device)
    model.to(device)  # encoding for the pruning and the measurements too
    usage = prune_to_used(model, train.images, args.prune)
    eval_set, stats = measured(model, train, test, usage, device)
    write_outputs(args, model, eval_set, {**stats, "epochs": args.epochs, "final_loss": losses[-1]}, start, tracker)


def run_pretrained(args: argparse.Namespace, tracker) -> None:
    """--pretrained DIR: its VQModel as the tokenizer, pruned to the codes the train sample uses, then measured."""
    from tokenforge.runtime import job_device
    from tokenforge.tokenizer.pretrained import from_folder
    from tokenforge.tokenizer.train import load_splits, prune_to_used
    from tokenforge.tokenizer.vq import MAX_CODES

    start = time.perf_counter()
    train, test = load_splits(args.shards, args.max_images, args.seed)
    if len(train.keys) == 0:
        raise TokenforgeError(f"{args.shards}: the train split has no images")
    model = from_folder(args.pretrained, train.images.shape[1:3], train.images.shape[3], args.seed)
    # vq_*: the model's own shape; the training flags (--codebook-size, ...) are logged as given, unused here
    keys = ("downsample", "grid", "codebook_size", "code_dim", "image_size", "channels")
    shape = {f"vq_{key}": model.config[key] for key in keys}
    tracker.log_params({"kind": model.config["kind"], **shape, "images": len(train.keys)})
    device = job_device(args.device)
    usage = prune_to_used(model.to(device), train.images, args.prune)
    if usage["codebook_size"] > MAX_CODES:
        raise TokenforgeError(f"tokenizer.pretrained {args.pretrained}: keeps {usage['codebook_size']} codes, token "
                              f"files hold at most {MAX_CODES} (tokenizer.prune: true keeps only those in use)")
    eval_set, stats = measured(model, train, test, usage, device)
    write_outputs(args, model, eval_set, {**stats, "pretrained": model.config["pretrained"]}, start, tracker)


def measured(model, train, test, usage: dict, device) -> tuple:
    """(the images the tokenizer is measured on, its stats): reconstruction (and on scenes colour recovery) on the
    test sample (the train one where there is no test split) with the pruned codebook, what later stages get, and
    the codebook's usage."""
    from tokenforge.tokenizer.train import psnr, reconstruction_mse, scene_color_recovery

    eval_set = test if test is not None else train
    mse = reconstruction_mse(model, eval_set.images)
    split = "test" if test is not None else "train"
    stats = {"mse": mse, "psnr": psnr(mse), "eval_split": split, **scene_color_recovery(model, eval_set), **usage,
             "train_images": len(train.keys), "device": str(device)}  # fmt: skip
    return eval_set, stats


def write_outputs(args: argparse.Namespace, model, eval_set, stats: dict, start: float, tracker) -> None:
    """The tokenizer folder (atomically into --out), then its MLflow metrics and artifacts; trained or pretrained."""
    from tokenforge.runtime import job_resources
    from tokenforge.tokenizer.train import save_reconstruction_grid
    from tokenforge.tokenizer.vq import save_tokenizer

    with atomic_dir(args.out) as tmp:
        save_tokenizer(model.cpu(), tmp)
        save_reconstruction_grid(model, eval_set, tmp / "reconstructions.png")
        stats["wall_s"] = time.perf_counter() - start
        stats["resources"] = job_resources()
        write_json(tmp / "stats.json", stats)
    tracker.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
    for name in ("config.json", "stats.json", "reconstructions.png"):
        tracker.log_artifact(args.out / name)
    log.info(
        "tokenizer: psnr %.2f dB, %d of %d codes used (kept %d)",
        stats["psnr"], stats["used_codes"], stats["trained_codebook_size"], stats["codebook_size"],
    )
