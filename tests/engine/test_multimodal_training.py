"""Sequential VQA and captioning through `tokenforge train/evaluate --family`: BLIP on scene tokens, the memory of
core tokens with their text under a byte budget on disk, determinism, exact resume after a kill, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokenforge.cli import main
from tokenforge.continual.memory import read_memory

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _prepare(root: Path, family: str, count: int, tasks: int, per_task: int) -> Path:
    """Scenes -> shards -> a tiny tokenizer -> tokens -> a split of the family, all through the CLI."""
    assert main(["shard", "--source", "scenes", "--scenes-count", str(count), "--scenes-size", "16", "--out", str(root / "shard"), "-q"]) == 0
    assert main(["tokenizer", "--shards", str(root / "shard"), "--out", str(root / "tokenizer"), "--epochs", "1",
                 "--codebook-size", "16", "--code-dim", "4", "--hidden-dim", "8", "--downsample", "4", "-q"]) == 0  # fmt: skip
    assert main(["tokenize", "--shards", str(root / "shard"), "--tokenizer", str(root / "tokenizer"), "--out", str(root / "tokens"), "-q"]) == 0
    assert main(["split", "--family", family, "--tokens", str(root / "tokens" / "train.parquet"), "--out", str(root / "split"),
                 "--tasks", str(tasks), "--classes-per-task", str(per_task), "-q"]) == 0  # fmt: skip
    return root


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    return _prepare(tmp_path_factory.mktemp("vqa"), "vqa", 60, 2, 2)


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    return _prepare(tmp_path_factory.mktemp("captioning"), "captioning", 60, 2, 1)


def _flags(data: Path, family: str, out: Path, task: int, *extra: str) -> list[str]:
    args = ["train", "--family", family, "--tokens", str(data / "tokens" / "train.parquet"), "--tokenizer", str(data / "tokenizer"),
            "--split", str(data / "split"), "--task", str(task), "--out", str(out), "--epochs", "2", "--batch-size", "16",
            "--embed-dim", "32", "--depth", "1", "--num-heads", "2", "--text-max-len", "20", "--memory-method", "coretokenset",
            "--memory-scorer", "gradient", "--memory-token-fraction", "0.5", "--memory-budget", "3000"]  # fmt: skip
    if task:
        args += ["--previous", str(out.parent / f"task-{task - 1}")]
    return args + list(extra)


def train(data, family, out, task, *extra):
    return main(_flags(data, family, out, task, *extra) + ["-q"])


def evaluate(data, family, model, task, out):
    return main(["evaluate", "--family", family, "--model", str(model), "--tokens", str(data / "tokens" / "test.parquet"),
                 "--split", str(data / "split"), "--task", str(task), "--out", str(out), "-q"])  # fmt: skip


def test_vqa_chain_keeps_core_tokens_with_their_text_within_the_budget(vqa, tmp_path):
    for task in (0, 1):
        assert train(vqa, "vqa", tmp_path / f"task-{task}", task) == 0
        memory_file = tmp_path / f"task-{task}" / "memory.arrows.zst"
        stats = json.loads((tmp_path / f"task-{task}" / "stats.json").read_text())
        assert stats["memory_bytes"] == memory_file.stat().st_size <= 3000  # the budget, counted on disk
        memory = read_memory(memory_file)
        assert len(memory) == stats["memory_samples"] > 0
        assert memory.tokens_per_sample == 8  # half of the 4x4 grid
        assert set(memory.extra) == {"prompt", "target"} and all(memory.extra["prompt"]) and all(memory.extra["target"])
        assert sorted(set(memory.tasks.tolist())) == list(range(task + 1))
        # scenes: where this task's kept tokens fall, on the objects their questions name vs those objects' area
        assert 0 <= stats["named_object_share"] <= 1 and 0 < stats["named_object_area"] < 1
        assert 0 < stats["named_object_rows"] <= int((memory.tasks == task).sum())
    tokenizer = json.loads((vqa / "tokenizer" / "stats.json").read_text())  # scenes: the colour check ran
    assert tokenizer["scene_color_recovery_original"] > 0.95 and 0 <= tokenizer["scene_color_recovery"] <= 1
    # The shared budget fit (continual.policy.fit_budget): every group (here 2 per task) the same number of rows, one
    # more for the first groups while the leftover bytes allow.
    counts = list(stats["memory_samples_per_class"].values())
    assert len(counts) == 4 and max(counts) - min(counts) <= 1 and sum(counts) == len(memory)
    for task in (0, 1):
        assert evaluate(vqa, "vqa", tmp_path / f"task-{task}", task, tmp_path / f"eval-{task}.json") == 0
    row = json.loads((tmp_path / "eval-1.json").read_text())
    assert row["metric"] == "vqa_accuracy" and len(row["accuracy"]) == 2 and all(0 <= a <= 1 for a in row["accuracy"])
    assert row["examples"][0][0]["prediction"] is not None


def test_coreset_keeps_whole_grids_and_both_fit_the_same_budget(vqa, tmp_path):
    tight = ["--memory-budget", "900", "--memory-token-fraction", "0.25"]
    assert train(vqa, "vqa", tmp_path / "tokens" / "task-0", 0, *tight) == 0
    assert train(vqa, "vqa", tmp_path / "coreset" / "task-0", 0, *tight, "--memory-method", "coreset") == 0
    core = read_memory(tmp_path / "tokens" / "task-0" / "memory.arrows.zst")
    whole = read_memory(tmp_path / "coreset" / "task-0" / "memory.arrows.zst")
    assert whole.tokens_per_sample == 16 and core.tokens_per_sample == 4
    # Both fill the budget, counted on disk. Whether fewer tokens buy more items depends on the grid: on these 4x4 grids
    # of few codes each row's text and key cost more than its ids, so the two keep about as many items.
    for method in ("tokens", "coreset"):
        assert 0 < (tmp_path / method / "task-0" / "memory.arrows.zst").stat().st_size <= 900
    assert len(core) > 0 and len(whole) > 0


def test_same_seed_same_model_and_memory(vqa, tmp_path):
    for run in ("a", "b"):
        assert train(vqa, "vqa", tmp_path / run / "task-0", 0, "--memory-scorer", "atman") == 0
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert (tmp_path / "a" / "task-0" / name).read_bytes() == (tmp_path / "b" / "task-0" / name).read_bytes()


def test_captioning_chain_and_its_scores(captions, tmp_path):
    for task in (0, 1):
        assert train(captions, "captioning", tmp_path / f"task-{task}", task, "--memory-scorer", "random") == 0
    assert evaluate(captions, "captioning", tmp_path / "task-1", 1, tmp_path / "eval.json") == 0
    row = json.loads((tmp_path / "eval.json").read_text())
    assert row["metric"] == "cider"
    assert set(row["scores"]) == {"bleu4", "cider", "object_recall", "shape_recall", "count_accuracy"}
    memory = read_memory(tmp_path / "task-1" / "memory.arrows.zst")
    assert set(memory.extra["prompt"]) == {"a picture of"}
    # a scene's captions name all of its objects: the kept tokens' share on them against their area
    stats = json.loads((tmp_path / "task-1" / "stats.json").read_text())
    assert 0 <= stats["named_object_share"] <= 1 and 0 < stats["named_object_area"] < 1
    assert stats["named_object_rows"] == int((memory.tasks == 1).sum())


def test_joint_without_a_previous_model_trains_a_fresh_one_on_every_task_so_far(vqa, tmp_path):
    """The blind control's training (workflow/rules/65_control.smk): at the last task, joint and blind, no --previous."""
    assert train(vqa, "vqa", tmp_path / "task-0", 0, "--memory-method", "joint") == 0
    flags = _flags(vqa, "vqa", tmp_path / "control", 1, "--memory-method", "joint", "--blind")
    flags = flags[: flags.index("--previous")] + flags[flags.index("--previous") + 2 :]
    assert main(flags + ["-q"]) == 0
    both = json.loads((tmp_path / "control" / "stats.json").read_text())["train_items"]
    assert both > json.loads((tmp_path / "task-0" / "stats.json").read_text())["train_items"]
    from tokenforge.models.blip import BlipModel

    assert BlipModel.load(tmp_path / "control").settings.blind


def test_bad_input_is_one_line(vqa, tmp_path, capsys):
    assert train(vqa, "vqa", tmp_path / "x", 1) == 2  # task 1 needs task 0's output
    assert "task-0" in capsys.readouterr().err
    assert train(vqa, "vqa", tmp_path / "y", 0, "--memory-scorer", "chefer") == 2
    assert "memory.scorer" in capsys.readouterr().err
    assert train(vqa, "captioning", tmp_path / "z", 0) == 2  # a vqa split
    err = capsys.readouterr().err.strip()
    assert "tasks.json" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def _process(data, out, *extra):
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    args = [str(Path(sys.executable).parent / "tokenforge"), *_flags(data, "vqa", out, 0, "--epochs", "6", *extra), "--threads", "1"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _latest_step(ckpt: Path) -> int:
    latest = ckpt / "latest"
    return int(latest.read_text().strip().removeprefix("step")) if latest.is_file() else -1


def test_vqa_training_killed_mid_run_resumes_to_the_identical_model_and_memory(vqa, tmp_path):
    ref = _process(vqa, tmp_path / "ref" / "task-0")
    assert ref.wait(timeout=600) == 0, ref.stdout.read()
    ckpt = tmp_path / "ckpt"
    job = _process(vqa, tmp_path / "out" / "task-0", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1")
    deadline = time.time() + 600
    while _latest_step(ckpt) < 7:  # mid-epoch of a later epoch (60 images x ~5 questions / 16 per batch)
        assert job.poll() is None and time.time() < deadline, "the job ended before step 7"
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    killed_at = _latest_step(ckpt)
    assert not (tmp_path / "out" / "task-0").exists()  # no half-written outputs
    again = _process(vqa, tmp_path / "out" / "task-0", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1")
    log = again.communicate(timeout=600)[0]
    assert again.returncode == 0, log
    assert f"resuming from step {killed_at} " in log, log[-2000:]
    for name in ("model.safetensors", "memory.arrows.zst"):
        assert (tmp_path / "ref" / "task-0" / name).read_bytes() == (tmp_path / "out" / "task-0" / name).read_bytes(), name
    assert not ckpt.exists()


def test_vqa_on_pixel_patches_trains_and_evaluates(vqa, tmp_path):
    """--input pixels: the same grid's pixel patches from the shards (their json carries the text)."""
    pixels = ["--input", "pixels", "--shards", str(vqa / "shard")]
    assert train(vqa, "vqa", tmp_path / "task-0", 0, *pixels) == 0
    memory = read_memory(tmp_path / "task-0" / "memory.arrows.zst")
    assert memory.ids.ndim == 3 and memory.ids.shape[2] == 4 * 4 * 3  # kept patches of 4x4 RGB pixels
    assert main(["evaluate", "--family", "vqa", "--model", str(tmp_path / "task-0"), "--shards", str(vqa / "shard"),
                 "--split", str(vqa / "split"), "--task", "0", "--out", str(tmp_path / "eval.json"), "-q"]) == 0  # fmt: skip
    assert len(json.loads((tmp_path / "eval.json").read_text())["accuracy"]) == 2


@pytest.mark.parametrize("family", ["vqa", "captioning"])
def test_training_in_two_cpu_processes_that_agree_on_the_memory(family, request, tmp_path):
    """`train.processes: 2`'s launch command (torchrun, gloo), run for real: each rank trains on its half of the items,
    both build the memory, check they agree (their digests are gathered), and rank 0 writes it; task 1 replays it."""
    import hashlib
    import shlex

    from tokenforge.engine.launch import train_command

    data = request.getfixturevalue("vqa" if family == "vqa" else "captions")
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for task in (0, 1):
        flags = _flags(data, family, tmp_path / f"task-{task}", task, "--threads", "1", "-q")
        cmd = train_command(processes=2) + " " + " ".join(shlex.quote(str(f)) for f in flags)
        proc = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert proc.stdout.count(f"task {task}: building the memory") == 2  # both ranks built it
        stats = json.loads((tmp_path / f"task-{task}" / "stats.json").read_text())
        on_disk = (tmp_path / f"task-{task}" / "memory.arrows.zst").read_bytes()
        assert stats["world_size"] == 2 and stats["memory_sha256"] == hashlib.sha256(on_disk).hexdigest()
        assert 0 < stats["memory_bytes"] <= 3000
    per_rank = math.ceil(stats["train_items"] / 2)
    assert stats["steps"] == 2 * math.ceil(per_rank / 16)  # 2 epochs of each rank's half, 16 items a batch


def test_vqa_task_0_starts_its_vision_encoder_from_the_mtm_pretrain_stage(vqa, tmp_path, capsys):
    """`tokenforge pretrain --mode mtm --data tasks` on the VQA images; `train --init` maps the ViT onto BLIP's unit stem
    and vision encoder (families/text_start.py): on the same grids BLIP's vision encoder computes what the ViT did,
    the ViT's architecture replaces the flags', and the chain goes on from there."""
    import torch

    from tokenforge.data.tokens import load_tokens
    from tokenforge.models.blip import BlipModel
    from tokenforge.models.vit import load_model

    pretrain = tmp_path / "pretrain"
    common = ["--tokens", str(vqa / "tokens" / "train.parquet"), "--split", str(vqa / "split"), "--tokenizer", str(vqa / "tokenizer"),
              "--epochs", "2", "--batch-size", "16", "--embed-dim", "16", "--depth", "1", "--num-heads", "2", "-q"]  # fmt: skip
    assert main(["pretrain", "--mode", "mtm", "--data", "heldout", "--out", str(tmp_path / "x"), *common]) == 2
    assert "heldout needs classes the split leaves out; a vqa split has none" in capsys.readouterr().err
    assert main(["pretrain", "--mode", "mtm", "--data", "tasks", "--out", str(pretrain), *common]) == 0
    grids = load_tokens(vqa / "tokens" / "train.parquet").ids
    assert json.loads((pretrain / "stats.json").read_text())["samples"] == len(grids)  # every train image
    assert train(vqa, "vqa", tmp_path / "start", 0, "--init", str(pretrain), "--epochs", "0") == 0  # the start itself
    blip, vit = BlipModel.load(tmp_path / "start"), load_model(pretrain).eval()
    assert (blip.settings.width, blip.settings.vision_layers, blip.settings.text_layers) == (16, 1, 1)  # not --embed-dim 32
    units = torch.from_numpy(grids[:5])
    with torch.no_grad():
        expected = vit.forward_tokens(units)
        got = blip.hf.vision_model(pixel_values=blip.pack(units)).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for task in (0, 1):
        extra = ["--init", str(pretrain)] if task == 0 else []
        assert train(vqa, "vqa", tmp_path / f"task-{task}", task, *extra) == 0
    assert BlipModel.load(tmp_path / "task-1").settings.width == 16
    assert train(vqa, "vqa", tmp_path / "both", 0, "--init", str(pretrain), "--pretrained", str(tmp_path)) == 2
    assert "--init and --pretrained" in capsys.readouterr().err
