"""Fixtures shared by several test modules."""

import shutil

import numpy as np
import pytest
import torch
from helpers.pipeline import REPO

from tokenforge.tokenizer import vq as tokenizer
from tokenforge.tokenizer.train import train_tokenizer


@pytest.fixture
def tok_dir(tmp_path):
    """A tiny trained tokenizer directory: 8x8 grey images, 16 codes, a 4x4 token grid."""
    config = tokenizer.make_config((8, 8), 1, downsample=2, codebook_size=16, code_dim=4, hidden_dim=8, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 1)).astype(np.uint8)
    model, _ = train_tokenizer(images, config, epochs=1, batch_size=16, lr=5e-3)
    path = tmp_path / "tokenizer"
    path.mkdir()
    tokenizer.save_tokenizer(model, path)
    return path


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is much faster on a busy CPU; the next tests get their threads back.
    A module uses it for all its tests with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
