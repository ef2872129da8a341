"""Training sets the rendezvous variables for DeepSpeed in this process; keep them out of later tests."""

import os

import pytest

RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _keep_environment(monkeypatch):
    for name in RENDEZVOUS:
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)
