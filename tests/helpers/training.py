"""Tiny training data for the trainer's tests: a tokenizer (only its codebook matters), a token set whose classes
differ in one token, and a split into tasks."""

import json
from pathlib import Path

import numpy as np
import torch

from tokenforge.data.tokens import TokenSet, save_tokens
from tokenforge.tokenizer.vq import build_model, make_config, save_tokenizer


def token_task_data(
    root: Path, per_class: int, classes: int = 4, tasks: tuple = ((0, 1), (2, 3)), learnable: bool = False
) -> Path:
    """root/tokenizer, root/train.parquet (`classes` classes x `per_class` 4x4 grids of 16 codes, token (0, 0)
    revealing the class) and root/split/tasks.json with `tasks` (classes left out of every task are held out).

    The untrained tokenizer's codes are all alike (zeros), so a model learns nothing from the grids unless
    `learnable`, which gives it a random codebook."""
    torch.manual_seed(0)
    (root / "tokenizer").mkdir(parents=True)
    save_tokenizer(build_model(make_config((8, 8), 1, 2, 16, 8, 8, 0)), root / "tokenizer")
    if learnable:
        from safetensors.torch import save_file

        codebook = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
        save_file({"codebook": codebook}, str(root / "tokenizer" / "codebook.safetensors"))
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    ids = rng.integers(0, 16, (len(labels), 4, 4))
    ids[:, 0, 0] = labels * (16 // classes)  # a class-revealing token
    save_tokens(root / "train.parquet", TokenSet([f"k{i:03d}" for i in range(len(labels))], labels, ids), 16)
    (root / "split").mkdir()
    manifest = [{"task": t, "classes": list(c), "class_names": [chr(97 + k) for k in c]} for t, c in enumerate(tasks)]
    (root / "split" / "tasks.json").write_text(json.dumps({"num_classes": classes, "tasks": manifest}))
    return root


def two_task_chain(train, data: Path, root: Path, *extra) -> None:
    """Tasks 0 and 1 through `train(data, out, task, *flags)` into root/task-0 and root/task-1, each must succeed."""
    for task in (0, 1):
        previous = ["--previous", str(root / "task-0")] if task else []
        assert train(data, root / f"task-{task}", task, *previous, *extra) == 0
