"""Storage benchmark: bytes per image of pixels vs tokens, tokenizer quality, and accuracy per byte.

    .venv/bin/python benchmarks/storage.py            # all datasets (tens of minutes on 2 CPU cores)
    .venv/bin/python benchmarks/storage.py --only digits
    .venv/bin/python benchmarks/storage.py --only shapes128 --variants plain augment tokenadapt

For each dataset it runs the real stages (`tokenforge shard/tokenizer/tokenize/split/train/evaluate`)
in a work folder, then measures: bytes per image of raw pixels, PNG and JPEG payloads and WebDataset
shards, tokens on disk; tokenizer PSNR and codebook use; tokenize and token-loader throughput against
the rate training consumes samples; and the test accuracy of the same ViT trained on tokens and on
pixel patches of the same grid, for the same epochs (one task with all classes: joint training).
--variants adds token models trained with SeiT's augmentations (augment: Token-EDA synonyms and square
swap, random resized crop, embedding noise, CutMix, ColorAdapt) and with those plus TokenAdapt (tokenadapt:
the `tokenforge tokenadapt` stage, then half of every batch through it), same epochs and model.
Writes benchmarks/results/storage.json and storage.md (docs/benchmarks/storage.md renders both tables from the JSON).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent

# name -> shard args, tokenizer args. Grids: digits 8/2 = 4x4, shapes64 64/8 = 8x8, shapes128 128/8 = 16x16.
DATASETS = {
    "digits": (["--source", "digits"], ["--codebook-size", "64", "--code-dim", "16", "--downsample", "2", "--epochs", "30"]),
    "shapes64": (
        ["--source", "shapes", "--shapes-count", "1500", "--shapes-classes", "10", "--shapes-size", "64"],
        ["--codebook-size", "256", "--code-dim", "32", "--downsample", "8", "--epochs", "8", "--batch-size", "64"],
    ),
    "shapes128": (
        ["--source", "shapes", "--shapes-count", "1500", "--shapes-classes", "10", "--shapes-size", "128"],
        ["--codebook-size", "512", "--code-dim", "32", "--downsample", "8", "--epochs", "5", "--batch-size", "32"],
    ),
}
TRAIN = ["--epochs", "15", "--embed-dim", "64", "--depth", "4", "--num-heads", "4", "--input-dropout", "0",
         "--memory-method", "none", "--threads", "2"]
# Token-model variants (--variants): plain is the token column of the main table.
VARIANTS = ("plain", "augment", "tokenadapt")
# SeiT's token augmentations, as the official recipe (crop scale narrowed for small grids: 4x4 digits).
AUGMENT = ["--augment-synonym-p", "0.25", "--augment-swap-p", "0.25", "--augment-crop-p", "1.0", "--augment-crop-scale",
           "0.35", "1.0", "--augment-noise-p", "0.5", "--augment-cutmix-p", "0.5", "--augment-coloradapt-p", "0.25"]
TOKENADAPT = ["--epochs", "20", "--width", "128", "--heads", "4", "--threads", "2"]


def tf(*args: str) -> None:
    """Run one stage as its own process, as the pipeline does."""
    subprocess.run([str(BIN / "tokenforge"), *args, "-q"], check=True)


def jpeg_bytes(shards: Path, quality: int = 90) -> tuple[float, float]:
    """(mean JPEG payload, WebDataset shard bytes per image) for the same images stored as JPEG."""
    from PIL import Image

    from tokenforge.data.shards import load_split

    payload, tar_bytes, count = 0, 0, 0
    for split in ("train", "test"):
        data = load_split(shards, split)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, label, image in zip(data.keys, data.labels, data.images):
                img = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
                out = io.BytesIO()
                img.save(out, format="JPEG", quality=quality)
                for ext, blob in (("jpg", out.getvalue()), ("cls", str(int(label)).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime = len(blob), 0
                    tar.addfile(info, io.BytesIO(blob))
                payload += len(out.getvalue())
                count += 1
        tar_bytes += len(buf.getvalue())
    return payload / count, tar_bytes / count


def train_and_evaluate(d: Path, kind: str, name: str, epochs: int, *extra: str) -> tuple[float, float]:
    """(test accuracy, training samples/s) of one model trained as `name` on `kind` (tokens or pixels)."""
    model = d / f"train-{name}"
    train = [*TRAIN[:1], str(epochs), *TRAIN[2:]]
    tf("train", "--input", kind, "--tokens", str(d / "tokens" / "train.parquet"), "--shards", str(d / "shard"),
       "--tokenizer", str(d / "tokenizer"), "--split", str(d / "split"), "--task", "0", "--out", str(model), *train, *extra)
    tf("evaluate", "--model", str(model), "--tokens", str(d / "tokens" / "test.parquet"), "--shards",
       str(d / "shard"), "--split", str(d / "split"), "--task", "0", "--out", str(d / f"eval-{name}.json"))
    accuracy = json.loads((d / f"eval-{name}.json").read_text())["accuracy"][0]
    return accuracy, json.loads((model / "stats.json").read_text())["samples_per_s"]


def run_variants(d: Path, variants: list[str], epochs: int, plain: float, tokenadapt_epochs: int) -> dict:
    """Accuracy of each token-model variant (plain is the main table's), and the adapter's own numbers."""
    out = {"accuracy": {"plain": plain}, "train_samples_per_s": {}}
    if not set(variants) - {"plain"}:
        return out
    tf("synonyms", "--tokenizer", str(d / "tokenizer"), "--out", str(d / "synonyms.json"))
    augment = [*AUGMENT, "--synonyms", str(d / "synonyms.json")]
    if "augment" in variants:
        out["accuracy"]["augment"], out["train_samples_per_s"]["augment"] = train_and_evaluate(
            d, "tokens", "tokens-augment", epochs, *augment)
    if "tokenadapt" in variants:
        t0 = time.perf_counter()
        adapter_args = [*TOKENADAPT[:1], str(tokenadapt_epochs), *TOKENADAPT[2:]]
        tf("tokenadapt", "--shards", str(d / "shard"), "--tokenizer", str(d / "tokenizer"), "--out", str(d / "tokenadapt"),
           *adapter_args)
        stats = json.loads((d / "tokenadapt" / "stats.json").read_text())
        keys = ("adapted_accuracy", "nearest_baseline_accuracy", "identity_accuracy", "unchanged_accuracy", "final_loss")
        out["adapter"] = {**{k: stats[k] for k in keys}, "stage_wall_s": time.perf_counter() - t0}
        out["accuracy"]["tokenadapt"], out["train_samples_per_s"]["tokenadapt"] = train_and_evaluate(
            d, "tokens", "tokens-tokenadapt", epochs, *augment, "--augment-tokenadapt-p", "1.0",
            "--adapter", str(d / "tokenadapt"))
    return out


def run_dataset(name: str, work: Path, variants: list[str] = ("plain",), epochs: int = 15, tokenadapt_epochs: int = 20) -> dict:
    from tokenforge.data.tokens import read_throughput

    shard_args, tok_args = DATASETS[name]
    d = work / name
    t0 = time.perf_counter()
    tf("shard", *shard_args, "--out", str(d / "shard"))
    tf("tokenizer", "--shards", str(d / "shard"), "--out", str(d / "tokenizer"), *tok_args, "--threads", "2")
    tf("tokenize", "--shards", str(d / "shard"), "--tokenizer", str(d / "tokenizer"), "--out", str(d / "tokens"))
    tf("split", "--classes", str(d / "shard" / "classes.json"), "--out", str(d / "split"), "--tasks", "1")
    acc = {}
    for kind in ("tokens", "pixels"):
        acc[kind], acc[f"{kind}_train_samples_per_s"] = train_and_evaluate(d, kind, kind, epochs)
    extra = run_variants(d, list(variants), epochs, acc["tokens"], tokenadapt_epochs) if len(variants) > 1 or variants[0] != "plain" else None
    shard = json.loads((d / "shard" / "stats.json").read_text())
    tokens = json.loads((d / "tokens" / "stats.json").read_text())
    tok = json.loads((d / "tokenizer" / "stats.json").read_text())
    images = sum(tokens["counts"].values())
    jpg, jpg_shard = jpeg_bytes(d / "shard")
    raw = shard["raw_bytes_per_image"]
    tok_bytes = tokens["bytes_per_image"]["tokens"]
    return {
        "dataset": name,
        "image_size": shard["image_size"],
        "channels": shard["channels"],
        "images": images,
        "grid": tokens["grid"],
        "codes": tokens["num_codes"],
        "bytes_per_image": {
            "raw_pixels": raw,
            "png": shard["png_bytes_per_image"],
            "png_shards": shard["shard_bytes_per_image"],
            "jpeg_q90": jpg,
            "jpeg_shards": jpg_shard,
            "tokens": tok_bytes,
        },
        "tokens_percent_of_raw": 100 * tok_bytes / raw,
        "tokenizer": {k: tok.get(k) for k in ("psnr", "codebook_usage", "used_codes", "perplexity", "wall_s")},
        "tokenize_images_per_s": images / tokens["wall_s"],
        "loader_images_per_s": read_throughput(d / "tokens" / "train.parquet"),
        "accuracy": {"tokens": acc["tokens"], "pixels": acc["pixels"]},
        "token_accuracy_percent_of_pixel": 100 * acc["tokens"] / max(acc["pixels"], 1e-9),
        "train_samples_per_s": {"tokens": acc["tokens_train_samples_per_s"], "pixels": acc["pixels_train_samples_per_s"]},
        "wall_s": time.perf_counter() - t0,
        "train_epochs": epochs,
        **({"variants": extra} if extra else {}),
    }


def markdown(rows: list[dict]) -> str:
    head = (
        "| dataset | image | grid × codes | raw B | PNG B | PNG shard B | JPEG B | JPEG shard B | token B | tokens / raw "
        "| PSNR dB | acc tokens | acc pixels | tokens / pixels acc | tokenize img/s | loader img/s | training img/s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        b = r["bytes_per_image"]
        h, w = r["image_size"]
        lines.append(
            f"| {r['dataset']} | {h}×{w}×{r['channels']} | {r['grid'][0]}×{r['grid'][1]} × {r['codes']} "
            f"| {b['raw_pixels']:,.0f} | {b['png']:,.0f} | {b['png_shards']:,.0f} | {b['jpeg_q90']:,.0f} "
            f"| {b['jpeg_shards']:,.0f} | {b['tokens']:,.1f} | {r['tokens_percent_of_raw']:.2f}% "
            f"| {r['tokenizer']['psnr']:.1f} | {r['accuracy']['tokens']:.3f} | {r['accuracy']['pixels']:.3f} "
            f"| {r['token_accuracy_percent_of_pixel']:.0f}% | {r['tokenize_images_per_s']:,.0f} "
            f"| {r['loader_images_per_s']:,.0f} "
            f"| {r['train_samples_per_s']['tokens']:,.0f} |"
        )
    return head + "\n".join(lines) + "\n" + variants_markdown(rows)


def variants_markdown(rows: list[dict]) -> str:
    """The token-model variants (--variants) as a second table; empty when no row has them."""
    rows = [r for r in rows if "variants" in r]
    if not rows:
        return ""
    out = ("\n| dataset | epochs | acc pixels | acc tokens | + augment | + augment + TokenAdapt | best tokens / pixels acc "
           "| adapter token acc (held-out) | nearest-neighbour baseline | identity g(f(z)) |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        v, a = r["variants"]["accuracy"], r["variants"].get("adapter", {})
        cell = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
        best = max(v.values())
        out += (f"| {r['dataset']} | {r.get('train_epochs', 15)} | {r['accuracy']['pixels']:.3f} | {cell(v.get('plain'))} "
                f"| {cell(v.get('augment'))} | {cell(v.get('tokenadapt'))} | {100 * best / max(r['accuracy']['pixels'], 1e-9):.0f}% "
                f"| {cell(a.get('adapted_accuracy'))} | {cell(a.get('nearest_baseline_accuracy'))} "
                f"| {cell(a.get('identity_accuracy'))} |\n")
    return out


def merged(path: Path, rows: list[dict]) -> list[dict]:
    """The rows just run, plus the other datasets' rows already in `path` (--only one dataset keeps the rest), in
    DATASETS order."""
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    by_name = {r["dataset"]: r for r in old} | {r["dataset"]: r for r in rows}
    return [by_name[name] for name in DATASETS if name in by_name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(DATASETS), default=list(DATASETS), help="datasets to run")
    parser.add_argument("--work", type=Path, default=HERE / "work" / "storage", help="scratch folder for the stages")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where storage.json/.md go")
    parser.add_argument("--table-only", action="store_true", help="rewrite storage.md from storage.json, run nothing")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["plain"],
                        help="token-model variants: plain (the main table), augment (SeiT's augmentations), tokenadapt "
                        "(augment + TokenAdapt, runs the tokenadapt stage)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of every model")
    parser.add_argument("--tokenadapt-epochs", type=int, default=20, help="epochs of the tokenadapt stage")
    args = parser.parse_args()
    if args.table_only:
        rows = json.loads((args.out / "storage.json").read_text())["rows"]
        (args.out / "storage.md").write_text(markdown(rows))
        print(markdown(rows))
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    rows = []
    for name in args.only:
        print(f"== {name}", flush=True)
        rows.append(run_dataset(name, args.work, args.variants, args.epochs, args.tokenadapt_epochs))
        print(json.dumps(rows[-1], indent=2), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version()}
    rows = merged(args.out / "storage.json", rows)
    (args.out / "storage.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "storage.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
