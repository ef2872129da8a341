"""Training sets the rendezvous variables for DeepSpeed and (with --threads) torch's threads in this process; keep
both out of later tests."""

import os

import pytest
import torch

RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _keep_environment(monkeypatch):
    for name in RENDEZVOUS:
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
