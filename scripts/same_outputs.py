#!/usr/bin/env python3
"""Check that a change keeps tokenforge's behaviour byte for byte: run the pipeline, fingerprint what it wrote.

    python scripts/same_outputs.py run OUT.json [--configs default tiny] [--workdir DIR]
    python scripts/same_outputs.py compare BEFORE.json AFTER.json

`run` executes the real Snakemake pipeline of this checkout (the Snakefile next to this script) for each named
config: `default` is config/config.yaml as shipped, `tiny` is the end-to-end test's config (tests/helpers/pipeline.py), `vqa` and `captioning` are config/vqa.yaml and
config/captioning.yaml as shipped.
It writes the sha256 of every deterministic output (shards, tokenizer, token files, synonyms, split, each task's
model and memory, each evaluation) and the accuracy matrix. `compare` prints what differs and exits 1 if anything
does. Run `run` once on the old commit and once on the new one, on the same machine with the same thread count:
results repeat on one CPU type and thread count, not across machines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "default": "{}\n",
    # the end-to-end test's config (tests/helpers/pipeline.py TINY): herding selection and Chefer relevance
    "tiny": (
        "run: tiny\n"
        "tokenizer: {codebook_size: 32, code_dim: 8, hidden_dim: 16, epochs: 2}\n"
        "split: {tasks: 2, classes_per_task: 2}\n"
        "train: {epochs: 2, embed_dim: 32, depth: 2, log_every: 2}\n"
        'memory: {method: coretokenset, selection: herding, scorer: chefer, token_fraction: 0.5, budget: "20%"}\n'
    ),
}
FILE_CONFIGS = {"vqa": "vqa.yaml", "captioning": "captioning.yaml"}  # example configs laid over config/config.yaml
# Outputs that must not change; timings (stats.json, benchmarks/, logs/) and MLflow ids may.
PATTERNS = (
    "shard/*.tar", "shard/index.parquet", "shard/classes.json",
    "tokenizer/*.safetensors", "tokens/*.parquet", "synonyms/synonyms.json", "split/*.json",
    "train/task-*/model.safetensors", "train/task-*/model.json", "train/task-*/memory.arrows.zst",
    "evaluate/task-*.json", "package/accuracy_matrix.csv",
)


TIMINGS = ("wall_s", "samples_per_s", "memory_build_s", "peak_rss_mb", "resources")  # JSON keys that measure time or memory, not results


def _drop_timings(value):
    if isinstance(value, dict):
        return {k: _drop_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_drop_timings(v) for v in value]
    return value


def sha256(path: Path) -> str:
    """The file's sha256; for JSON, of its content without timing keys."""
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_drop_timings(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def fingerprint(run_dir: Path) -> dict:
    files = {}
    for pattern in PATTERNS:
        for path in sorted(run_dir.glob(pattern)):
            files[str(path.relative_to(run_dir))] = sha256(path)
    matrix = (run_dir / "package" / "accuracy_matrix.csv").read_text()
    return {"files": files, "accuracy_matrix": matrix}


def run_config(name: str, workdir: Path, cores: int) -> dict:
    work = workdir / name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(REPO / "config", work / "config")
    extra = work / "extra.yaml"
    extra.write_text((REPO / "config" / FILE_CONFIGS[name]).read_text() if name in FILE_CONFIGS else CONFIGS[name])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(REPO / "src")  # this checkout's code, whatever the venv's editable install points at
    snakemake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", str(cores),
                 "--configfile", str(extra), "--quiet"]
    print(f"[{name}] {' '.join(snakemake)}", flush=True)
    proc = subprocess.run(snakemake, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"[{name}] snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    run = next(p for p in (work / "results").iterdir() if p.is_dir())
    return fingerprint(run)


def compare(before: dict, after: dict) -> int:
    bad = 0
    for config in sorted(set(before) | set(after)):
        b, a = before.get(config), after.get(config)
        if b is None or a is None:
            print(f"{config}: only in {'after' if b is None else 'before'}")
            bad += 1
            continue
        for path in sorted(set(b["files"]) | set(a["files"])):
            if b["files"].get(path) != a["files"].get(path):
                print(f"{config}: {path} differs")
                bad += 1
        if b["accuracy_matrix"] != a["accuracy_matrix"]:
            print(f"{config}: accuracy matrix differs\n--- before\n{b['accuracy_matrix']}--- after\n{a['accuracy_matrix']}")
            bad += 1
        print(f"{config}: {len(b['files'])} files compared; accuracy matrix:\n{a['accuracy_matrix']}")
    print("identical" if not bad else f"{bad} differences")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the pipeline on each config and write the fingerprints")
    r.add_argument("out", type=Path)
    r.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=[*CONFIGS, *FILE_CONFIGS])
    r.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temporary folder, removed)")
    r.add_argument("--cores", type=int, default=2)
    c = sub.add_parser("compare", help="compare two fingerprint files")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "compare":
        return compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        result = {name: run_config(name, workdir, args.cores) for name in args.configs}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
