import argparse
import json

import pytest

from tokenforge.tracking.runs import (
    NullTracker,
    child_run,
    end_parent,
    flatten,
    parent_info,
    public_params,
    start_parent,
)
from tokenforge.tracking.sync import run_id_of, sync


@pytest.fixture(autouse=True)
def _no_ambient_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def synced_run_id(results, tracker) -> str:
    """A job's run id: a live job's at once, a deferred job's once `sync` replayed its spool file."""
    if tracker.run_id is None:
        sync(results)
        return run_id_of(tracker.path)
    return tracker.run_id


def test_no_results_dir_gives_null_tracker():
    with child_run(None, "shard", {}, argparse.Namespace()) as tracker:
        assert isinstance(tracker, NullTracker)
        tracker.log_metrics({"a": 1})


def test_flatten_and_secret_filter(monkeypatch):
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    args = argparse.Namespace(lr=0.1, api_key="hunter2", func=print, track="x", db_password="p", out="o")
    assert public_params(args) == {"lr": 0.1, "out": "o"}


@pytest.mark.parametrize("mode", ["live", "deferred"])
def test_parent_and_children_in_sqlite_store(tmp_path, monkeypatch, mode):
    from mlflow import MlflowClient

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-log-me")
    results = tmp_path / "run1"
    info = start_parent(results, experiment="exp-test", params={"train.epochs": 3, "memory.token_secret": "x"}, mode=mode)
    assert info["tracking_uri"] == f"sqlite:///{results.resolve() / 'mlflow.db'}" and info["mode"] == mode
    assert json.loads((results / "mlflow" / "parent.json").read_text()) == info
    args = argparse.Namespace(epochs=3, seed=0)
    with child_run(results, "train", {"task": "1"}, args) as tracker:
        tracker.log_metrics({"loss": 0.5, "flag": True}, step=2)
    end_parent(results)  # deferred: replays the spool first
    child_id = tracker.run_id or run_id_of(tracker.path)
    info = json.loads((results / "mlflow" / "parent.json").read_text())  # deferred: the sync wrote the ids

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


@pytest.mark.parametrize("mode", ["live", "deferred"])
def test_failed_job_marks_child_failed(tmp_path, monkeypatch, mode):
    from mlflow import MlflowClient

    results = tmp_path / "run2"
    if mode == "live":  # any store named by the environment is tracked live (mlflow.mode auto)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{results.resolve() / 'mlflow.db'}")
    with pytest.raises(RuntimeError):
        with child_run(results, "evaluate", {}, argparse.Namespace()) as tracker:
            raise RuntimeError("boom")
    info = parent_info(results)  # created lazily by the first job
    assert info["mode"] == mode
    run_id = synced_run_id(results, tracker)
    assert MlflowClient(info["tracking_uri"]).get_run(run_id).info.status == "FAILED"


def test_unreachable_store_warns_and_goes_on(tmp_path, caplog):
    results = tmp_path / "run3"
    (results / "mlflow").mkdir(parents=True)
    (tmp_path / "a-file").write_text("not a folder")  # a store nobody can create, not even root
    bad = {"tracking_uri": f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}", "experiment_id": "1", "parent_run_id": "abc"}
    (results / "mlflow" / "parent.json").write_text(json.dumps(bad))
    with child_run(results, "shard", {}, argparse.Namespace(a=1)) as tracker:
        tracker.log_metrics({"x": 1.0})
    assert isinstance(tracker, NullTracker)
    assert "tracking unavailable" in caplog.text


@pytest.mark.parametrize("mode", ["live", "deferred"])
def test_datasets_are_logged_as_run_inputs_with_digest_and_context(tmp_path, mode):
    from mlflow import MlflowClient

    from tokenforge.tracking.runs import dataset_digest

    results = tmp_path / "run"
    info = start_parent(results, experiment="exp-data", mode=mode)
    tokens = tmp_path / "tokens" / "train.parquet"
    tokens.parent.mkdir()
    tokens.write_bytes(b"x" * 100)
    shards = tmp_path / "shard"
    shards.mkdir()
    (shards / "index.json").write_text("{}")
    with child_run(results, "train", {}, argparse.Namespace()) as tracker:
        tracker.log_dataset("tokens/train.parquet", tokens, "training", {"samples": 7})
        tracker.log_dataset("shard", shards, "source")
    run_id = synced_run_id(results, tracker)
    inputs = MlflowClient(info["tracking_uri"]).get_run(run_id).inputs.dataset_inputs
    by_name = {i.dataset.name: i for i in inputs}
    train = by_name["tokens/train.parquet"]
    assert train.dataset.digest == dataset_digest(tokens)
    assert json.loads(train.dataset.profile) == {"bytes": 100, "samples": 7}
    assert json.loads(train.dataset.source)["uri"] == tokens.resolve().as_uri()
    assert [(t.key, t.value) for t in train.tags] == [("mlflow.data.context", "training")]
    assert by_name["shard"].tags[0].value == "source"
    before = dataset_digest(tokens)
    tokens.write_bytes(b"y" * 100)  # same size, other content: another digest
    assert dataset_digest(tokens) != before


def test_slurm_job_id_is_a_tag_only_under_slurm(monkeypatch):
    from tokenforge.tracking.runs import base_tags

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert "slurm_job_id" not in base_tags()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert base_tags()["slurm_job_id"] == "4242"


def test_two_jobs_logging_the_same_dataset_at_once_both_keep_tracking(tmp_path, monkeypatch):
    """Seen in the pipeline: evaluate-0 and evaluate-1 logged tokens/test.parquet at the same moment, one insert of
    the dataset row lost the race (UNIQUE constraint failed: datasets...), and that job's tracking was switched off
    with its run left RUNNING. The loser now retries and links the row the other job inserted."""
    from mlflow import MlflowClient
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    results = tmp_path / "run"
    info = start_parent(results, experiment="exp-race", mode="live")  # the race is between live jobs
    tokens = tmp_path / "test.parquet"
    tokens.write_bytes(b"z" * 10)
    with child_run(results, "evaluate", {"task": "0"}, argparse.Namespace()) as first:
        first.log_dataset("tokens/test.parquet", tokens, "evaluation")
    real, calls = SqlAlchemyStore.log_inputs, []

    def lose_the_race_once(self, *args, **kwargs):  # as if the other job inserted the row just before this one
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
                               "datasets.digest")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SqlAlchemyStore, "log_inputs", lose_the_race_once)
    with child_run(results, "evaluate", {"task": "1"}, argparse.Namespace()) as second:
        second.log_dataset("tokens/test.parquet", tokens, "evaluation")
        second.log_metrics({"average_accuracy": 0.5})
    assert second.enabled and len(calls) == 2
    run = MlflowClient(info["tracking_uri"]).get_run(second.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["average_accuracy"] == 0.5
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["tokens/test.parquet"]
