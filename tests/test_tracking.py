import argparse
import json

import pytest

from tokenforge.tracking import (
    NullTracker,
    child_run,
    end_parent,
    flatten,
    parent_info,
    public_params,
    start_parent,
)


@pytest.fixture(autouse=True)
def _no_ambient_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_no_results_dir_gives_null_tracker():
    with child_run(None, "shard", {}, argparse.Namespace()) as tracker:
        assert isinstance(tracker, NullTracker)
        tracker.log_metrics({"a": 1})


def test_flatten_and_secret_filter(monkeypatch):
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    args = argparse.Namespace(lr=0.1, api_key="hunter2", func=print, track="x", db_password="p", out="o")
    assert public_params(args) == {"lr": 0.1, "out": "o"}


def test_parent_and_children_in_sqlite_store(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-log-me")
    results = tmp_path / "run1"
    info = start_parent(results, experiment="exp-test", params={"train.epochs": 3, "memory.token_secret": "x"})
    assert info["tracking_uri"] == f"sqlite:///{results.resolve() / 'mlflow.db'}"
    assert json.loads((results / "mlflow" / "parent.json").read_text()) == info
    args = argparse.Namespace(epochs=3, seed=0)
    with child_run(results, "train", {"task": "1"}, args) as tracker:
        tracker.log_metrics({"loss": 0.5, "flag": True}, step=2)
        child_id = tracker.run_id
    end_parent(results)

    client = MlflowClient(info["tracking_uri"])
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == info["parent_run_id"]
    assert child.data.tags["rule"] == "train" and child.data.tags["task"] == "1"
    assert "host" in child.data.tags and "git_commit" in child.data.tags
    assert child.data.metrics == {"loss": 0.5}
    assert child.data.params == {"epochs": "3", "seed": "0"}
    assert child.info.status == "FINISHED"
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params == {"train.epochs": "3"}  # the secret-looking key is dropped
    assert "do-not-log-me" not in json.dumps(parent.data.params) + json.dumps(child.data.params)
    assert child.info.artifact_uri.startswith((results.resolve() / "mlartifacts").as_uri())


def test_failed_job_marks_child_failed(tmp_path):
    from mlflow import MlflowClient

    results = tmp_path / "run2"
    with pytest.raises(RuntimeError):
        with child_run(results, "evaluate", {}, argparse.Namespace()) as tracker:
            run_id = tracker.run_id
            raise RuntimeError("boom")
    info = parent_info(results)  # created lazily by the first job
    assert MlflowClient(info["tracking_uri"]).get_run(run_id).info.status == "FAILED"


def test_unreachable_store_warns_and_goes_on(tmp_path, caplog):
    results = tmp_path / "run3"
    (results / "mlflow").mkdir(parents=True)
    bad = {"tracking_uri": "sqlite:////nonexistent-dir/x/mlflow.db", "experiment_id": "1", "parent_run_id": "abc"}
    (results / "mlflow" / "parent.json").write_text(json.dumps(bad))
    with child_run(results, "shard", {}, argparse.Namespace(a=1)) as tracker:
        tracker.log_metrics({"x": 1.0})
    assert isinstance(tracker, NullTracker)
    assert "tracking unavailable" in caplog.text
