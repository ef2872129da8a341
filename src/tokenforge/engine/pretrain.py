"""The pretrain stage: a start for task 0 that is not a random initialisation (`tokenforge pretrain`).

Three modes, each writing a TokenViT (`model.safetensors` + `model.json`) and `stats.json` to its output folder:

- `supervised`: a classifier trained on labelled data disjoint from the task sequence;
- `mtm`: label-free masked-token modelling on token grids (models/mtm.py), which also writes the predictor
  (`mtm_head.safetensors`) that replay's `memory.fill: mtm` uses;
- `timm`: for `input: pixels`, the weights of a local timm checkpoint (a model name plus a safetensors or
  weights-only file) mapped onto the run's grid (models/timm_import.py); nothing is trained.

The data of `supervised` and `mtm` (`--data`):
- `heldout`: the run's training samples of the classes outside every task of the split (a split that leaves
  classes out, e.g. 4 tasks x 2 of 10 classes): disjoint from the sequence by construction;
- a source spec (`shapes`, `digits`, `idx:/path`, `imagefolder:/path`, `cifar:/path`): another dataset's train
  images, converted to the run's image size and channels and encoded by the run's tokenizer (or cut into the
  run's pixel patches): disjoint if the source's classes are;
- `tasks` (mtm only): the sequence's own training samples, labels unused (vqa, captioning: every train image,
  text unused). Not disjoint: the model has seen the images of later tasks (without labels), which a continual
  learner would not have; say so when reporting.

Training is a plain loop (AdamW, linear warm-up then cosine, as the task jobs), fp32, one process on the
compute device; it is short, so a killed job starts over (no checkpoints). A task-0 classifier loads the backbone
(`init_from`) and gets a fresh head for its own classes; a task-0 BLIP (vqa, captioning) takes it as its unit stem and
vision encoder (families/text_start.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tokenforge.errors import TokenforgeError
from tokenforge.families import FAMILIES
from tokenforge.io import atomic_dir, read_json, write_json
from tokenforge.models.vit import ModelConfig, TokenViT, load_model, save_model, standardised
from tokenforge.runtime import compute_device, progress, seed_everything


def check_args(args) -> None:
    if args.mode == "timm":
        if args.input != "pixels":
            raise TokenforgeError("pretrain.mode: timm weights are for input pixels (token models pretrain with supervised or mtm)")
        if not args.timm_model or args.timm_checkpoint is None:
            raise TokenforgeError("pretrain.timm_model and pretrain.timm_checkpoint: both required with mode timm")
        return
    if args.mode == "mtm" and args.input != "tokens":
        raise TokenforgeError("pretrain.mode: mtm predicts code ids; it needs input tokens")
    if args.mode == "supervised" and args.data == "tasks":
        raise TokenforgeError("pretrain.data: tasks with mode supervised would train on the sequence's own labels (use heldout or a source)")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise TokenforgeError(f"pretrain.{name}: must be >= 1, got {getattr(args, name)}")


def pretrain(args, tracker) -> None:
    start = time.perf_counter()
    check_args(args)
    seed_everything(args.seed)
    tok = read_json(args.tokenizer / "config.json")
    grid, patch, channels = tuple(tok["grid"]), tok["downsample"], tok["channels"]
    if args.mode == "timm":
        from tokenforge.models.timm_import import load_timm

        model = load_timm(args.timm_model, args.timm_checkpoint, grid=grid, patch=patch, channels=channels, num_classes=0,
                          model_kwargs=timm_kwargs(args.timm_kwargs))
        stats = {"mode": "timm", "timm_model": args.timm_model, "checkpoint": str(args.timm_checkpoint)}
        head = None
    else:
        units, labels, num_classes, described = pretrain_data(args, tok)
        print(f"pretrain {args.mode}: {len(units)} samples of {described}", flush=True)
        model = new_model(args, tok, num_classes if args.mode == "supervised" else 0)
        model, head, stats = fit(args, model, units, labels)
        stats.update(mode=args.mode, data=described, samples=len(units), classes=num_classes)
    stats.update(parameters=sum(p.numel() for p in model.parameters()), wall_s=time.perf_counter() - start,
                 embed_dim=model.config.embed_dim, depth=model.config.depth)
    with atomic_dir(args.out) as tmp:
        save_model(model.cpu().eval(), tmp)
        if head is not None:
            from safetensors.torch import save_file

            from tokenforge.models.mtm import HEAD_FILE

            save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(tmp / HEAD_FILE))
        write_json(tmp / "stats.json", stats)
    tracker.log_params({"pretrain_mode": args.mode, "pretrain_data": stats.get("data", args.timm_model)})
    tracker.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    tracker.log_artifact(args.out / "stats.json")
    shown = [k for k in stats if k.startswith("final_") or k == "frequent_code_accuracy"]
    print(f"pretrain {args.mode}: " + ", ".join(f"{k} {stats[k]:.3f}" for k in shown), flush=True)


def timm_kwargs(text: str | None) -> dict:
    import json

    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenforgeError(f"--timm-kwargs: not JSON ({exc})") from None
    if not isinstance(kwargs, dict):
        raise TokenforgeError(f"--timm-kwargs: must be a JSON object, got {text!r}")
    return kwargs


def new_model(args, tok: dict, num_classes: int) -> TokenViT:
    """A seeded TokenViT on the tokenizer's grid (with the mask embedding for MTM)."""
    from tokenforge.tokenizer.vq import load_codebook

    if args.input == "tokens":
        codebook = load_codebook(args.tokenizer)
        sizes = {"codebook_size": codebook.shape[0], "code_dim": codebook.shape[1]}
    else:
        codebook = None
        sizes = {"codebook_size": 0, "code_dim": tok["downsample"] ** 2 * tok["channels"], "patch": tok["downsample"]}
    arch = {name: getattr(args, name) for name in ("embed_dim", "depth", "num_heads", "mlp_ratio")}
    config = ModelConfig(grid=tuple(tok["grid"]), input=args.input, **sizes, num_classes=num_classes, **arch,
                         mask_token=args.mode == "mtm")
    return TokenViT(config, codebook)


# --- data ---------------------------------------------------------------------------------------


def pretrain_data(args, tok: dict) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(units (N, h, w[, F]), labels (N,), number of classes, a description) of `args.data`."""
    if args.data in ("heldout", "tasks"):
        return _run_data(args)
    return _source_data(args, tok)


def _run_data(args) -> tuple[np.ndarray, np.ndarray, int, str]:
    from tokenforge.data.units import load_units

    if args.split is None:
        raise TokenforgeError(f"--split: required with --data {args.data}")
    manifest = read_json(args.split / "tasks.json")
    family = manifest.get("family", "classification")
    patch = read_json(args.tokenizer / "config.json")["downsample"]
    _, labels, units = load_units(args.input, args.tokens, args.shards, "train", patch)
    keep = FAMILIES.load(family).sequence_mask(manifest, labels)
    if keep is None:  # a split by the images' text (vqa, captioning): every image may serve the sequence
        if args.data == "heldout":
            raise TokenforgeError(f"pretrain.data: heldout needs classes the split leaves out; a {family} split has none "
                                  "(use tasks, the sequence's own images, or a source)")  # fmt: skip
        return units, np.zeros(len(units), np.int64), 0, f"the {family} sequence's train images, text unused"
    if args.data == "heldout":
        keep = ~keep
        held = sorted(set(range(manifest["num_classes"])) - {c for t in manifest["tasks"] for c in t["classes"]})
        if not held or not keep.any():
            raise TokenforgeError(f"{args.split / 'tasks.json'}: every class is in a task; pretrain.data heldout needs a split "
                                  "that leaves classes out (fewer tasks x classes_per_task than classes)")
        labels = np.searchsorted(held, labels[keep])  # the held-out classes renumbered 0..k-1
        return units[keep], labels, len(held), f"the {len(held)} held-out classes {held} of the run's train split"
    return units[keep], labels[keep], manifest["num_classes"], "the task sequence's train split, labels unused"


def _source_data(args, tok: dict) -> tuple[np.ndarray, np.ndarray, int, str]:
    """Another source's train images at the run's size and channels, as the run's units."""
    from tokenforge.data.shards import prepare_image
    from tokenforge.data.sources import first_per_class, open_source

    height, width = tok["image_size"]
    if height != width:
        raise TokenforgeError(f"{args.tokenizer / 'config.json'}: pretrain.data from a source needs square images, not {height}x{width}")
    source = open_source(args.data, seed=args.seed)
    if source.splits is not None:
        source = source.subset([i for i, s in enumerate(source.splits) if s == "train"])
    source = first_per_class(source, args.max_per_class)
    if not len(source):
        raise TokenforgeError(f"pretrain.data {args.data}: no training images")
    mode = "L" if tok["channels"] == 1 else "RGB"
    images = np.stack([np.asarray(prepare_image(source.image(i), mode, height)) for i in
                       progress(range(len(source)), total=len(source), desc="pretrain data")])
    images = images.reshape(len(images), height, width, tok["channels"])
    if args.input == "tokens":
        from tokenforge.tokenizer.encode import encode_split
        from tokenforge.tokenizer.vq import load_tokenizer

        units = encode_split(load_tokenizer(args.tokenizer), images, 512, "pretrain tokens")
    else:
        from tokenforge.models.vit import patchify

        units = patchify(torch.from_numpy(images), tok["downsample"]).numpy()
    return units, source.labels.copy(), len(source.class_names), f"{args.data} ({len(source.class_names)} classes)"


# --- training -----------------------------------------------------------------------------------


def fit(args, model: TokenViT, units: np.ndarray, labels: np.ndarray):
    """Train `model` on the units (supervised cross-entropy, or MTM); returns (model, MTM head or None, stats)."""
    from tokenforge.engine.deepspeed import warmup_cosine
    from tokenforge.models.mtm import MTMHead, mask_grids, mask_ratio, mtm_loss

    device = compute_device()
    model = model.to(device).train()
    head = MTMHead(model.config.embed_dim, model.config.codebook_size).to(device) if args.mode == "mtm" else None
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(units) / args.batch_size)
    steps = steps_per_epoch * args.epochs
    warmup = max(1, int(args.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, steps))
    generator = torch.Generator().manual_seed(args.seed)
    x, y = torch.from_numpy(units), torch.from_numpy(labels)
    stats: dict = {}
    bar = progress(range(args.epochs), desc=f"pretrain {args.mode}", unit="epoch")
    for _ in bar:
        order = torch.randperm(len(x), generator=generator)
        loss_sum, right, count = 0.0, 0, 0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            if head is None:
                logits = model(x[idx].to(device))
                loss = torch.nn.functional.cross_entropy(logits.float(), y[idx].to(device))
                right += int((logits.argmax(1).cpu() == y[idx]).sum())
                count += len(idx)
            else:
                ratio = mask_ratio(generator, args.mask_mean, args.mask_std, *args.mask_range)
                masked, mask = mask_grids(x[idx], ratio, model.config.codebook_size, generator)
                loss, hits = mtm_loss(model, head, x[idx], mask, masked.to(device))
                right += hits
                count += int(mask.sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
        stats = {"final_loss": loss_sum / len(x), "final_accuracy": right / max(count, 1)}
        bar.set_postfix(loss=f"{stats['final_loss']:.3f}", acc=f"{stats['final_accuracy']:.3f}")
    if head is not None:
        stats.update(fill_accuracy(model, head, x, generator))
    return model.eval(), head, stats


@torch.no_grad()
def fill_accuracy(model: TokenViT, head, x: torch.Tensor, generator: torch.Generator, keep: float = 0.125) -> dict:
    """How well the MTM model fills grids of which only `keep` of the tokens are left (the memory's regime), on
    up to 1000 of its samples: its accuracy at the other positions, and that of the most frequent code."""
    from tokenforge.models.mtm import mask_grids, mtm_loss

    model.eval()
    sample = x[:1000]
    masked, mask = mask_grids(sample, 1 - keep, model.config.codebook_size, generator)
    _, hits = mtm_loss(model, head, sample, mask, masked.to(next(model.parameters()).device))
    frequent = int(np.bincount(x.reshape(-1).numpy()).argmax())
    total = int(mask.sum())
    return {"fill_keep": keep, "final_fill_accuracy": hits / total,
            "frequent_code_accuracy": int((sample[mask] == frequent).sum()) / total}


# --- starting task 0 from it ---------------------------------------------------------------------


def init_from(directory: Path, num_classes: int, mask_token: bool, codebook: torch.Tensor | None, input: str) -> TokenViT:
    """A task-0 model: the pretrained backbone of `directory` with a fresh seeded head for `num_classes` (and a mask
    embedding only if the task's replay uses one), checked against the run's tokenizer and input."""
    pretrained = load_model(directory)
    config = pretrained.config
    if config.input != input:
        raise TokenforgeError(f"{directory}: a pretrained model of input {config.input!r}, not {input!r}")
    if input == "tokens" and (codebook is None or not torch.equal(standardised(codebook), pretrained.codebook)):
        raise TokenforgeError(f"{directory}: pretrained with another tokenizer (codebooks differ)")
    model = TokenViT(replace(config, num_classes=num_classes, mask_token=mask_token), codebook)
    state = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("vit.head.")}
    if not mask_token:
        state.pop("mask_embed", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("vit.head.") and k != "mask_embed"]
    if missing or unexpected:
        raise TokenforgeError(f"{directory}: weights do not fit a {num_classes}-class model ({(missing + unexpected)[0]})")
    return model
