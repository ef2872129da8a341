"""Scale benchmark: peak memory and time of every data stage as the dataset grows (issue 25).

    .venv/bin/python benchmarks/scale.py                          # 10,000, 40,000 and 160,000 images
    .venv/bin/python benchmarks/scale.py --sizes 10000 40000      # a shorter look
    .venv/bin/python benchmarks/scale.py --gpu                    # a GPU machine: devices on, bigger sizes and model
    .venv/bin/python benchmarks/scale.py --render benchmarks/results/scale.json   # the Markdown again

For each size it runs the real pipeline (Snakemake, `warm_start: false`, so every job is its own process and
Snakemake's benchmark files measure it) on a seeded image folder of 100 procedural classes at 64 px
(benchmarks/scale_images.py), with benchmarks/scale.yaml laid over config/config.yaml: shard in `shard.parts`
jobs, the tokenizer on its `tokenizer.max_images` sample, tokenize one job per part, split into 10 tasks of 10
classes, then train and evaluate task 0 (the target `task_0`). The images are made before the timed part and
kept under --cache (benchmarks/work/scale/, gitignored): a size is the first N/100 images of every class of one
folder, hard-linked into a folder of its own, so a later, bigger run only adds images.

Per job it records Snakemake's benchmark file (wall seconds, `max_rss`: the job's process tree sampled every
0.5 s for 30 s, then every 30 s, so a short peak can be missed), the job's own stats.json `resources` where it
writes one (peak RSS from the kernel's VmHWM, which misses nothing, and CPU seconds), and the images it handled.
Per stage: the number of jobs, the largest peak RSS of any of its jobs, the longest job (a stage's wall time when
its parts run side by side, as on a cluster) and the job-seconds of all of them. Writes
benchmarks/results/scale.json and scale.md (scale-gpu.* with --gpu), the machine and the load average included:
the jobs share the machine with whatever else runs, so seconds move with the load; CPU seconds move less.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))
from scale_images import CLASSES, ensure_images, linked_subset  # noqa: E402

# The order of the table, with what the stage is called there.
STAGES = {
    "shard_part": "shard (each part)",
    "shard": "shard gather",
    "tokenizer": "tokenizer",
    "tokenize_part": "tokenize (each part)",
    "tokenize": "tokenize gather",
    "split": "split",
    "synonyms": "synonyms",
    "train": "train task 0",
    "evaluate": "evaluate task 0",
}
# --gpu: what changes on a GPU machine (devices are auto: the tokenizer, tokenize and evaluate use the GPU when
# CUDA is there; train.gpus 1 gives the training job one), with more images, the default tokenizer sample and a
# model nearer a real one.
GPU = {
    "sizes": [40000, 160000, 640000],
    "config": {
        "threads": 8,
        "tokenizer": {"hidden_dim": 64, "max_images": 20000, "batch_size": 256},
        "tokenize": {"batch_size": 1024},
        "train": {"gpus": 1, "embed_dim": 192, "depth": 6, "num_heads": 3, "batch_size": 256},
    },
}


def machine() -> dict:
    """CPU model, cores, memory and (where there is one) the GPU of this machine."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    gpu = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        gpu = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "gpu": gpu, "python": platform.python_version()}


def versions() -> dict:
    import snakemake
    import torch

    return {"torch": torch.__version__, "snakemake": snakemake.__version__}


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_config(size: int, images: Path, parts: int, gpu: bool) -> dict:
    """The config of one size: scale.yaml, then this run's name, source and parts (and --gpu's changes)."""
    config = yaml.safe_load((HERE / "scale.yaml").read_text())
    config = deep_merge(config, {"run": f"scale-{size}", "shard": {"source": f"imagefolder:{images}", "parts": parts}})
    return deep_merge(config, GPU["config"]) if gpu else config


def run_pipeline(work: Path, config: dict, cores: int, env: dict) -> float:
    """A fresh run of the pipeline up to task_0 in `work`; returns its wall seconds."""
    results = work / "results" / config["run"]
    shutil.rmtree(results, ignore_errors=True)
    shutil.rmtree(work / ".snakemake", ignore_errors=True)
    shutil.rmtree(work / "config", ignore_errors=True)
    shutil.copytree(ROOT / "config", work / "config")  # the Snakefile's configfile and deepspeed.json, as in tests
    (work / "scale.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(work), "--cores", str(cores),
               "--configfile", str(work / "scale.yaml"), "--", "task_0"]
    log_path = work / f"snakemake-{config['run']}.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the pipeline failed (exit {proc.returncode}); see {log_path}")
    return wall


def read_tsv(path: Path) -> dict:
    with open(path) as fh:
        row = list(csv.DictReader(fh, delimiter="\t"))[-1]

    def number(key):
        try:
            return float(row[key])
        except (KeyError, TypeError, ValueError):  # "NA" when the job ended before the first sample
            return None

    return {"s": number("s"), "max_rss_mb": number("max_rss"), "cpu_time_s": number("cpu_time"),
            "mean_load": number("mean_load")}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _test_images_of_task0(results: Path) -> int | None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    task = read_json(results / "split" / "task-0.json")
    test = results / "tokens" / "test.parquet"
    if not task or not test.is_file():
        return None
    labels = pq.read_table(test, columns=["label"])["label"]
    return int(pc.sum(pc.is_in(labels, value_set=pa.array(task["classes"], labels.type))).as_py())


def jobs_of(results: Path) -> list[dict]:
    """Every job of a run: its rule, wildcard, benchmark file, own resources and the images it handled."""
    bench = results / "benchmarks"
    jobs = []
    for tsv in sorted(bench.rglob("*.tsv")):
        name = tsv.relative_to(bench).with_suffix("").as_posix()  # shard/part-000, tokenizer, train/task-0, ...
        head, _, tail = name.partition("/")
        rule = {"shard": "shard_part", "tokenize": "tokenize_part"}.get(head, head) if tail else head
        stats_path = {
            "shard_part": results / "shard" / tail / "stats.json",
            "shard": results / "shard" / "stats.json",
            "tokenizer": results / "tokenizer" / "stats.json",
            "tokenize_part": results / "tokens-parts" / tail / "stats.json",
            "tokenize": results / "tokens" / "stats.json",
            "split": results / "split" / "stats.json",
            "train": results / "train" / tail / "stats.json",
            "evaluate": results / "evaluate" / f"{tail}.json",
        }.get(rule)
        stats = read_json(stats_path) if stats_path else {}
        own = stats.get("resources") or ({"peak_rss_mb": stats["peak_rss_mb"]} if "peak_rss_mb" in stats else {})
        job = {"rule": rule, "job": name, **read_tsv(tsv), "job_peak_rss_mb": own.get("peak_rss_mb"),
               "job_cpu_s": own.get("cpu_s"), "job_wall_s": stats.get("wall_s")}
        job["images"] = _images(rule, stats, results)
        if job["images"] and job["s"]:
            job["images_per_s"] = round(job["images"] / job["s"], 1)
        jobs.append(job)
    return jobs


def _images(rule: str, stats: dict, results: Path) -> int | None:
    """Images the job read or wrote: what its images/s counts (training: samples of its epochs)."""
    counts = stats.get("counts") or {}
    if rule in ("shard_part", "tokenize_part", "shard", "tokenize") and counts:
        return int(counts.get("train", 0)) + int(counts.get("test", 0))
    if rule == "tokenizer" and "train_images" in stats:
        return int(stats["train_images"]) * int(stats.get("epochs") or 1)
    if rule == "train" and "train_samples" in stats:
        epochs = yaml.safe_load((results / "config.resolved.yaml").read_text())["train"]["epochs"]
        return int(stats["train_samples"]) * int(epochs)
    if rule == "evaluate":
        return _test_images_of_task0(results)
    return None


def stages_of(jobs: list[dict]) -> dict:
    """Per rule: jobs, largest peak RSS (benchmark file and the job's own), longest job, job-seconds, images/s."""
    out = {}
    for rule in STAGES:
        group = [j for j in jobs if j["rule"] == rule]
        if not group:
            continue

        def top(key):
            values = [j[key] for j in group if j.get(key) is not None]
            return max(values) if values else None

        seconds = sum(j["s"] or 0 for j in group)
        images = sum(j["images"] or 0 for j in group)
        out[rule] = {"jobs": len(group), "max_rss_mb": top("max_rss_mb"), "job_peak_rss_mb": top("job_peak_rss_mb"),
                     "s_max": top("s"), "s_sum": round(seconds, 2),
                     "cpu_s_sum": round(sum(j["job_cpu_s"] or 0 for j in group), 2), "images": images or None,
                     "images_per_s": round(images / seconds, 1) if images and seconds else None}
        cpu = out[rule]["cpu_s_sum"]
        out[rule]["images_per_cpu_s"] = round(images / cpu, 1) if images and cpu else None
    return out


def job_env(cache: Path) -> dict:
    """The runs' environment: torch's extension cache of their own, so that no other process on the machine that
    builds DeepSpeed's CPU op with other flags makes a training job here build it again (seen: ~45 s and 2.3 GB of
    compiler in the job's benchmark file)."""
    return {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions")}


def prebuild_ops(env: dict) -> None:
    """DeepSpeed's CPU op, built (or found built) before the timed part, as `make install` does."""
    subprocess.run([sys.executable, "-m", "tokenforge.engine.deepspeed"], check=True, capture_output=True, env=env)


def measure(size: int, args: argparse.Namespace) -> dict:
    per_class = size // CLASSES
    t0 = time.perf_counter()
    master = ensure_images(args.cache / "images", per_class)
    images = linked_subset(master, args.cache / "sets" / str(size), per_class)
    prepare_s = time.perf_counter() - t0
    config = run_config(size, images, args.parts, args.gpu)
    work = args.cache / "runs"
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(f"scale: {size:,} images ({prepare_s:.0f} s to prepare them), running the pipeline to task_0 ...", flush=True)
    wall = run_pipeline(work, config, args.cores, job_env(args.cache))
    results = work / "results" / config["run"]
    jobs = jobs_of(results)
    print(f"scale: {size:,} images: {wall:.0f} s, {len(jobs)} jobs", flush=True)
    return {"images": per_class * CLASSES, "prepare_s": round(prepare_s, 1), "pipeline_wall_s": round(wall, 1),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "jobs": jobs, "stages": stages_of(jobs), "config": config}


# ------------------------------------------------------------------------------------------------------- report


def _mb(value) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _s(value) -> str:
    return "–" if value is None else (f"{value:,.1f}" if value < 100 else f"{value:,.0f}")


def _ratio(a: dict | None, b: dict | None) -> str:
    """Peak RSS of the last size over the first: the jobs' own VmHWM where both have it (exact), else the benchmark
    files' max_rss (sampled; in italics)."""
    if not a or not b:
        return "–"
    if a.get("job_peak_rss_mb") and b.get("job_peak_rss_mb"):
        return f"{b['job_peak_rss_mb'] / a['job_peak_rss_mb']:.2f}×"
    if a.get("max_rss_mb") and b.get("max_rss_mb"):
        return f"*{b['max_rss_mb'] / a['max_rss_mb']:.2f}×*"
    return "–"


def render(data: dict) -> str:
    runs = data["sizes"]
    first, last = runs[0], runs[-1]
    label = lambda r: f"{r['images'] // 1000}k"  # noqa: E731
    m = data["meta"]["machine"]
    lines = [
        f"Scale benchmark (`benchmarks/scale.py`{' --gpu' if data['meta'].get('gpu') else ''}): the pipeline to "
        f"`task_0` on 100 procedural classes at 64 px, `shard.parts: {data['meta']['parts']}`, "
        f"`warm_start: false`, `--cores {data['meta']['cores']}`, on {m['cpu']} ({m['cores']} cores, "
        f"{m['memory_gb']} GB{', ' + m['gpu'] if m.get('gpu') else ''}). Peak RSS: the largest `max_rss` of the "
        "stage's jobs in Snakemake's benchmark files, MiB; in brackets the job's own VmHWM (stats.json "
        "`resources`) where it writes one. s: the stage's longest job (its wall time with the parts side by side); "
        "job-s: all its jobs' seconds together. The ratio: of the jobs' own VmHWM, or in italics (no stats.json "
        "resources) of `max_rss`, which misses most of a job shorter than a second.",
        "",
        "| stage | jobs | " + " | ".join(f"{label(r)} peak RSS MiB | {label(r)} s" for r in runs)
        + f" | peak RSS {label(last)}/{label(first)} |",
        "|---|---:|" + "---:|---:|" * len(runs) + "---:|",
    ]
    names = dict(STAGES, shard="shard", tokenize="tokenize") if data["meta"]["parts"] == 1 else STAGES
    for rule, name in names.items():
        cells = []
        for r in runs:
            st = r["stages"].get(rule)
            if st is None:
                cells += ["–", "–"]
                continue
            own = f" ({_mb(st['job_peak_rss_mb'])})" if st.get("job_peak_rss_mb") is not None else ""
            cells += [f"{_mb(st['max_rss_mb'])}{own}", _s(st["s_max"]) + (f" ({_s(st['s_sum'])} job-s)" if st["jobs"] > 1 else "")]
        ratio = _ratio(first["stages"].get(rule), last["stages"].get(rule))
        jobs = "/".join(sorted({str(r["stages"][rule]["jobs"]) for r in runs if rule in r["stages"]}))
        lines.append(f"| {name} | {jobs} | " + " | ".join(cells) + f" | {ratio} |")
    lines.append("| **whole run** (pipeline wall) | | " + " | ".join(f" | {_s(r['pipeline_wall_s'])}" for r in runs) + " | |")
    lines += ["", "Images per second (a stage's images over its job-seconds, and over its jobs' own CPU seconds, "
              "which the machine's load moves less: per core; training: samples of its epoch; tokenizer: its sample "
              "of `max_images`):", "",
              "| stage | " + " | ".join(f"{label(r)} images | {label(r)} img/s | {label(r)} img/CPU-s" for r in runs) + " |",
              "|---|" + "---:|---:|---:|" * len(runs)]
    names = dict(STAGES, shard="shard", tokenize="tokenize") if data["meta"]["parts"] == 1 else STAGES
    for rule, name in names.items():
        cells = []
        for r in runs:
            st = r["stages"].get(rule) or {}
            cells += [f"{st['images']:,}" if st.get("images") else "–", _s(st.get("images_per_s")),
                      _s(st.get("images_per_cpu_s"))]
        if any(c != "–" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    loads = ", ".join(f"{label(r)} {r['load_average_before'][0]:.1f} → {r['load_average_after'][0]:.1f}" for r in runs)
    lines += ["", f"Load average (1 min) before → after each run: {loads}."]
    if data.get("findings"):
        lines += ["", data["findings"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="images per run, multiples of 100 (default 10000 40000 160000; --gpu: 40000 160000 640000)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder of scale.json and scale.md")
    parser.add_argument("--cache", type=Path, default=HERE / "work" / "scale",
                        help="generated images and the runs' work folder (kept between runs)")
    parser.add_argument("--parts", type=int, default=4, help="shard.parts: shard and tokenize jobs per run")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="snakemake --cores")
    parser.add_argument("--gpu", action="store_true", help=f"a GPU machine: {json.dumps(GPU['config'])}; writes scale-gpu.*")
    parser.add_argument("--render", type=Path, default=None, help="only write the Markdown of this JSON again")
    args = parser.parse_args(argv)
    name = "scale-gpu" if args.gpu else "scale"
    if args.render:
        data = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(render(data))
        return
    sizes = args.sizes or (GPU["sizes"] if args.gpu else [10000, 40000, 160000])
    if any(s % CLASSES or s < CLASSES * 10 for s in sizes):
        parser.error(f"--sizes: multiples of {CLASSES} of at least {CLASSES * 10} (10 images per class)")
    args.cache = args.cache.resolve()
    prebuild_ops(job_env(args.cache))
    data = {"meta": {"machine": machine(), **versions(), "parts": args.parts, "cores": args.cores, "gpu": args.gpu,
                     "date": time.strftime("%Y-%m-%d"), "base_config": "benchmarks/scale.yaml"},
            "sizes": []}
    previous = read_json(args.out / f"{name}.json")
    if previous.get("findings"):  # the written paragraph of what it shows stays until it is rewritten
        data["findings"] = previous["findings"]
    args.out.mkdir(parents=True, exist_ok=True)
    for size in sizes:  # written after each size, so a run stopped at a big size keeps the smaller ones
        data["sizes"].append(measure(size, args))
        (args.out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
        (args.out / f"{name}.md").write_text(render(data))
    print((args.out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
