"""`tokenforge compare` and `tokenforge log-bundle` on small SQLite stores, hand-made bundles, and a bundle that
`tokenforge package` makes from small hand-made stage outputs (no training)."""

import argparse
import csv
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from helpers.pipeline import REPO

from tokenforge import cli
from tokenforge.tracking import bundle as log_bundle
from tokenforge.tracking import compare
from tokenforge.tracking.base import mlflow_client as _client
from tokenforge.tracking.runs import (
    MlflowTracker,
    child_run,
    end_parent,
    start_parent,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)


@pytest.fixture(autouse=True)
def _no_ambient_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tokenforge(monkeypatch):
    # Only this module's subcommands: the other stages are written alongside and need not import.
    monkeypatch.setattr(cli, "STAGES", ("compare", "log-bundle"))
    return cli.main


def headline(accuracy: float, forgetting: float, memory: int, wall: float) -> dict:
    return {
        "final_average_accuracy": accuracy,
        "average_forgetting": forgetting,
        "backward_transfer": -forgetting,
        "memory_bytes": memory,
        "dataset_tokens_bytes": 24388,
        "total_wall_s": wall,
    }


def pipeline_run(results: Path, name: str, method: str, budget: str, seed: int, metrics: dict | None, end: bool = True) -> str:
    """A parent run as `tokenforge track start` makes it, plus a package job logging `metrics` (none: still running).
    Live: the store holds each run as it goes (a deferred parent is there only once `track sync` ran)."""
    params = {"memory.method": method, "memory.budget": budget, "seed": seed, "run": name}
    info = start_parent(results, run_name=name, params=params, mode="live")
    if metrics is not None:
        with child_run(results, "package", {}, argparse.Namespace(out="package")) as tracker:
            tracker.log_metrics(metrics)
    if end:
        end_parent(results)
    return info["parent_run_id"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Store a: two finished pipeline runs and one still running (no metrics); store b: metrics on the parent."""
    root = tmp_path_factory.mktemp("stores")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        a, b = root / "a", root / "b"
        pipeline_run(a, "coreset-s0", "coreset", "10%", 0, headline(0.61, 0.2, 1500, 100.25))
        # The package job of the second run failed once with other numbers, then a rerun finished.
        start_parent(a, run_name="tokens-s10", params={"memory.method": "coretokenset", "memory.budget": "10%", "seed": 10},
                     mode="live")
        with pytest.raises(RuntimeError):
            with child_run(a, "package", {}, argparse.Namespace()) as tracker:
                tracker.log_metrics(headline(0.01, 0.9, 9, 1.0))
                raise RuntimeError("killed")
        with child_run(a, "package", {}, argparse.Namespace()) as tracker:
            tracker.log_metrics(headline(0.55, 0.3, 1863, 232.3))
        end_parent(a)
        pipeline_run(a, "running", "coreset", "5%", 1, None, end=False)
        info = start_parent(b, run_name="random-s0", params={"memory.method": "random", "memory.budget": "2000", "seed": 0},
                            mode="live")
        MlflowTracker(_client(info["tracking_uri"]), info["parent_run_id"]).log_metrics(headline(0.7, 0.1, 2000, 50.0))
        end_parent(b)
    return {"a": a, "b": b}


def table(out: str) -> list[dict[str, str]]:
    """The printed table as rows of {column: cell} (cells never contain two spaces)."""
    lines = out.strip().splitlines()
    header = lines[0].split()
    assert tuple(header) == compare.COLUMNS
    return [dict(zip(header, [c.strip() for c in line.split("  ") if c.strip()])) for line in lines[1:]]


def test_table_rows_and_default_sort(stores, tokenforge, capsys):
    assert tokenforge(["compare", str(stores["a"]), str(stores["b"])]) == 0
    rows = table(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["random-s0", "coreset-s0", "tokens-s10", "running"]  # best first, "-" last
    best, coreset, tokens, running = rows
    assert best["final_average_accuracy"] == "70.00%" and best["budget"] == "2000"  # from the parent itself
    assert coreset == {
        **coreset,
        "status": "FINISHED",
        "method": "coreset",
        "budget": "10%",
        "seed": "0",
        "final_average_accuracy": "61.00%",
        "average_forgetting": "20.00%",
        "memory_bytes": "1,500",
        "dataset_tokens_bytes": "24,388",
        "total_wall_s": "100.2",
    }
    assert tokens["final_average_accuracy"] == "55.00%" and tokens["memory_bytes"] == "1,863"  # the finished rerun
    assert running["status"] == "RUNNING" and running["method"] == "coreset" and running["seed"] == "1"
    for column in compare.METRICS:
        assert running[column] == "-"
    assert len(coreset["run_id"]) == 32 and len(coreset["start_time"]) == len("2026-01-01 00:00")


def test_sort_options_and_csv(stores, tokenforge, capsys, tmp_path):
    out = tmp_path / "sub" / "compare.csv"
    args = ["compare", str(stores["a"]), str(stores["b"]), "--sort", "memory_bytes", "--ascending", "--csv", str(out)]
    assert tokenforge(args) == 0
    assert [r["run"] for r in table(capsys.readouterr().out)] == ["coreset-s0", "tokens-s10", "random-s0", "running"]
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["coreset-s0", "tokens-s10", "random-s0", "running"]
    assert tuple(rows[0]) == compare.COLUMNS
    assert rows[0]["final_average_accuracy"] == "0.61" and rows[0]["total_wall_s"] == "100.25"
    assert rows[0]["memory_bytes"] == "1500" and rows[0]["dataset_tokens_bytes"] == "24388"
    assert rows[0]["start_time"][:4].isdigit() and "T" in rows[0]["start_time"]
    assert all(rows[3][c] == "" for c in compare.METRICS)
    assert [p.name for p in out.parent.iterdir()] == ["compare.csv"]  # no temporary file left
    # Seeds sort by value, not as text ("10" after "1"); text columns alphabetically.
    assert tokenforge(["compare", str(stores["a"]), "--sort", "seed"]) == 0
    assert [r["seed"] for r in table(capsys.readouterr().out)] == ["10", "1", "0"]
    assert tokenforge(["compare", str(stores["a"]), "--sort", "run", "--ascending"]) == 0
    assert [r["run"] for r in table(capsys.readouterr().out)] == ["coreset-s0", "running", "tokens-s10"]


def test_tracking_uri_from_environment(stores, tokenforge, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{stores['b'].resolve() / 'mlflow.db'}")
    assert tokenforge(["compare"]) == 0
    assert [r["run"] for r in table(capsys.readouterr().out)] == ["random-s0"]
    # With RESULTS_DIRs the environment's store is not added; the same store given twice is read once.
    uri = f"sqlite:///{stores['a'].resolve() / 'mlflow.db'}"
    assert tokenforge(["compare", str(stores["a"]), "--tracking-uri", uri]) == 0
    assert len(table(capsys.readouterr().out)) == 3


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_compare_errors(stores, tokenforge, capsys, tmp_path):
    assert tokenforge(["compare", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("tokenforge compare: error: ") and str(tmp_path / "mlflow.db") in line
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert tokenforge(["compare", "--tracking-uri", missing]) == 2
    assert missing in one_error_line(capsys) and not (tmp_path / "none.db").exists()
    assert tokenforge(["compare", str(stores["a"]), "--experiment", "nope"]) == 2
    line = one_error_line(capsys)
    assert "'nope'" in line and str(stores["a"].resolve() / "mlflow.db") in line and "tokenforge" in line
    assert tokenforge(["compare"]) == 2
    assert "MLFLOW_TRACKING_URI" in one_error_line(capsys)


def test_no_runs_is_one_line(tokenforge, capsys, tmp_path):
    _client(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("tokenforge")
    capsys.readouterr()
    assert tokenforge(["compare", str(tmp_path), "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("no pipeline runs in experiment 'tokenforge'")
    assert (tmp_path / "c.csv").read_text().splitlines() == [",".join(compare.COLUMNS)]


def test_sqlite_path():
    assert compare.sqlite_path("sqlite:////abs/dir/mlflow.db") == Path("/abs/dir/mlflow.db")
    assert compare.sqlite_path("sqlite:///rel/mlflow.db") == Path("rel/mlflow.db")
    assert compare.sqlite_path("sqlite://") is None and compare.sqlite_path("http://host:5000") is None


# --- log-bundle -------------------------------------------------------------------------------

METRICS = {
    "num_tasks": 2,
    "accuracy_matrix": [[0.9, 0.0], [0.6, 0.8]],
    "average_accuracy": [0.9, 0.7],
    "final_average_accuracy": 0.7,
    "average_forgetting": 0.3,
    "backward_transfer": -0.3,
    "forward_transfer": None,
    "bytes": {"memory": 1234, "dataset_tokens": 50000, "memory_per_task": [1200, 1234]},
    "wall_time_s": {"train-0": 10.0, "total": 12.5},
    "memory": {"method": "coreset", "budget_bytes": 1300, "samples": 10, "tokens_per_sample": 64},
}
CONFIG = {
    "run": "backfilled",
    "seed": 3,
    "mlflow": {"experiment": "tokenforge", "tracking_uri": None},
    "memory": {"method": "coreset", "budget": "10%"},
    "train": {"epochs": 2, "api_key": "hunter2"},
}


def make_bundle(path: Path, members: dict[str, bytes] | None = None, extra: list[tarfile.TarInfo] | None = None) -> Path:
    """A tar.gz with tokenforge-results/{metrics.json, config.yaml, accuracy_matrix.png} (or `members`)."""
    if members is None:
        members = {
            "tokenforge-results/metrics.json": json.dumps(METRICS).encode(),
            "tokenforge-results/config.yaml": yaml.safe_dump(CONFIG).encode(),
            "tokenforge-results/accuracy_matrix.png": PNG,
        }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return path


def test_log_bundle_then_noop_then_force_then_compare(tokenforge, capsys, tmp_path):
    from mlflow import MlflowClient

    bundle = make_bundle(tmp_path / "tokenforge-results.tar.gz")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"  # a new store in a new folder: the backfill case
    assert tokenforge(["log-bundle", str(bundle), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "logged as run" in out and uri in out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tokenforge")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "backfilled" and run.info.run_id in out and run.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["source"] == "bundle"
    assert run.data.tags["bundle_sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert "host" in run.data.tags and "git_commit" in run.data.tags
    params = run.data.params
    assert params["memory.method"] == "coreset" and params["memory.budget"] == "10%" and params["seed"] == "3"
    assert params["train.epochs"] == "2" and "train.api_key" not in params  # secret-looking keys dropped
    assert run.data.metrics == {
        "final_average_accuracy": 0.7,
        "average_forgetting": 0.3,
        "backward_transfer": -0.3,
        "memory_bytes": 1234.0,
        "dataset_tokens_bytes": 50000.0,
        "total_wall_s": 12.5,
        "average_accuracy": 0.7,
    }
    curve = client.get_metric_history(run.info.run_id, "average_accuracy")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(0, 0.9), (1, 0.7)]
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "accuracy_matrix.png",
        "config.yaml",
        "metrics.json",
    ]
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())

    assert tokenforge(["log-bundle", str(bundle), "--tracking-uri", uri]) == 0  # the same bundle again: no-op
    out = capsys.readouterr().out
    assert "already logged as run " + run.info.run_id in out
    assert len(client.search_runs([exp.experiment_id])) == 1
    assert tokenforge(["log-bundle", str(bundle), "--tracking-uri", uri, "--force", "--run-name", "again"]) == 0
    capsys.readouterr()
    assert sorted(r.info.run_name for r in client.search_runs([exp.experiment_id])) == ["again", "backfilled"]

    assert tokenforge(["compare", "--tracking-uri", uri]) == 0
    rows = table(capsys.readouterr().out)
    assert {r["run"] for r in rows} == {"again", "backfilled"}
    assert rows[0]["method"] == "coreset" and rows[0]["final_average_accuracy"] == "70.00%"
    assert rows[0]["memory_bytes"] == "1,234" and rows[0]["total_wall_s"] == "12.5"


def test_log_bundle_folder_and_environment(tokenforge, capsys, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(METRICS))
    (folder / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "mlflow": {"experiment": "from-config"}}))
    (folder / "stats.json").write_text("{}")  # package's own stats and marker are not part of the bundle
    (folder / ".tokenforge").write_text("made by tokenforge\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tokenforge(["log-bundle", str(folder)]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("from-config").experiment_id])
    assert run.data.tags["bundle_sha256"] == hashlib.sha256((folder / "metrics.json").read_bytes()).hexdigest()
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["config.yaml", "metrics.json"]


def test_headline_names_match_package(tmp_path):
    """log-bundle logs the numbers under the names `tokenforge package` uses."""
    from tokenforge.report.package import log_to_tracker

    class Recorder:
        def __init__(self):
            self.metrics = {}

        def log_params(self, params):
            pass

        def log_metrics(self, metrics, step=None):
            if step is None:
                self.metrics.update(metrics)

        def log_artifact(self, path, artifact_path=None):
            pass

    recorder = Recorder()
    log_to_tracker(recorder, METRICS, tmp_path)
    assert log_bundle.headline_metrics(METRICS) == recorder.metrics


def _link(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


GOOD = {
    "tokenforge-results/metrics.json": json.dumps(METRICS).encode(),
    "tokenforge-results/config.yaml": yaml.safe_dump(CONFIG).encode(),
}


@pytest.mark.parametrize(
    "members, extra, expected",
    [
        ({"tokenforge-results/metrics.json": GOOD["tokenforge-results/metrics.json"]}, None, "config.yaml"),
        ({**GOOD, "tokenforge-results/metrics.json": b"{not json"}, None, "metrics.json"),
        ({**GOOD, "tokenforge-results/metrics.json": b'{"num_tasks": 2}'}, None, "metrics.json"),
        ({**GOOD, "tokenforge-results/config.yaml": b"a: [1, 2"}, None, "config.yaml"),
        ({**GOOD, "tokenforge-results/config.yaml": b"- a list"}, None, "config.yaml"),
        ({**GOOD, "../evil.txt": b"x"}, None, "../evil.txt"),
        ({**GOOD, "/tmp/evil.txt": b"x"}, None, "/tmp/evil.txt"),
        (GOOD, [_link("tokenforge-results/link")], "tokenforge-results/link"),
    ],
    ids=["missing-config", "bad-json", "no-accuracy", "bad-yaml", "config-not-mapping", "dotdot", "absolute", "symlink"],
)
def test_bad_bundle_is_one_line(tokenforge, capsys, tmp_path, members, extra, expected):
    bundle = make_bundle(tmp_path / "b.tar.gz", members, extra)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert tokenforge(["log-bundle", str(bundle), "--tracking-uri", uri]) == 2
    line = one_error_line(capsys)
    assert line.startswith("tokenforge log-bundle: error: ") and str(bundle) in line and expected in line
    assert not (tmp_path / "store").exists()  # nothing logged
    assert not (tmp_path.parent / "evil.txt").exists()


def test_corrupt_archive_and_no_store(tokenforge, capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    good = make_bundle(tmp_path / "good.tar.gz").read_bytes()
    for name, data in (("random.tar.gz", b"not a tar at all" * 10), ("truncated.tar.gz", good[: len(good) // 2])):
        (tmp_path / name).write_bytes(data)
        assert tokenforge(["log-bundle", str(tmp_path / name), "--tracking-uri", uri]) == 2
        line = one_error_line(capsys)
        assert str(tmp_path / name) in line and "not a readable .tar.gz" in line
    assert tokenforge(["log-bundle", str(tmp_path / "absent.tar.gz"), "--tracking-uri", uri]) == 2
    assert "absent.tar.gz" in one_error_line(capsys)
    assert tokenforge(["log-bundle", str(tmp_path / "good.tar.gz")]) == 2  # no --tracking-uri, no environment
    assert "--tracking-uri" in one_error_line(capsys)
    assert not (tmp_path / "mlflow.db").exists()


def _write_json(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory) -> Path:
    """tokenforge-results.tar.gz as the pipeline's package job makes it: `tokenforge package` on the files the
    earlier stages of a 2-task run write (hand-made here, in their formats), a real tiny model, the repo's config
    resolved with a run name, and a real PNG as the tokenizer's reconstruction grid."""
    import numpy as np
    import torch
    from PIL import Image

    from tokenforge.models.vit import ModelConfig, TokenViT, save_model

    root = tmp_path_factory.mktemp("real-bundle")
    matrix = [[0.92, 0.0], [0.71, 0.86]]
    evaluations = [
        _write_json(root / f"evaluate/task-{t}.json",
                    {"task": t, "accuracy": row, "num_test": [36, 35], "seen_classes": list(range(2 * (t + 1))),
                     "wall_s": 0.5})
        for t, row in enumerate(matrix)
    ]
    stats = {
        "shard": {"wall_s": 1.2, "raw_bytes_per_image": 64, "png_bytes_per_image": 90.5, "shard_bytes_per_image": 600.0,
                  "counts": {"train": 288, "test": 71}},
        "tokenizer": {"wall_s": 4.0, "psnr": 21.3, "codebook_usage": 0.81, "mse": 0.007},
        "tokenize": {"wall_s": 0.8, "bytes_per_image": {"raw_pixels": 64, "pixel_shards": 600.0, "tokens": 24.4},
                     "grid": [4, 4]},
        **{f"train-{t}": {"wall_s": 6.0 + t, "memory_bytes": 900 * (t + 1), "memory_samples": 14 * (t + 1),
                          "memory_tokens_per_sample": 8, "final_loss": 0.4} for t in range(2)},
    }
    stat_args = [f"{name}={_write_json(root / name / 'stats.json', obj)}" for name, obj in stats.items()]
    stat_args += [f"evaluate-{t}={path}" for t, path in enumerate(evaluations)]  # as the Snakefile passes them
    config = ModelConfig(grid=(4, 4), codebook_size=16, code_dim=4, num_classes=4, embed_dim=16, depth=1, num_heads=2)
    codebook = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    save_model(TokenViT(config, codebook), root / "train/task-1")
    resolved = {**yaml.safe_load((REPO / "config" / "config.yaml").read_text()), "run": "fixture-run"}
    (root / "config.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(root / "reconstructions.png")
    archive = root / "tokenforge-results.tar.gz"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(cli, "STAGES", ("package",))
        assert cli.main(["package", "-q", "--evaluations", *evaluations, "--stats", *stat_args,
                         "--model", str(root / "train/task-1/model.safetensors"),
                         "--config", str(root / "config.resolved.yaml"), "--out", str(root / "package"),
                         "--archive", str(archive), "--title", "tokenforge run 'fixture-run'",
                         "--images", f"reconstructions={root / 'reconstructions.png'}"]) == 0
    return archive


def test_real_bundle(real_bundle, tokenforge, capsys, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tokenforge(["log-bundle", str(real_bundle), "--tracking-uri", uri, "--experiment", "backfill"]) == 0
    with tarfile.open(real_bundle) as tar:
        names = sorted(Path(m.name).name for m in tar.getmembers() if m.isfile())
        expected = json.load(tar.extractfile("tokenforge-results/metrics.json"))
        config = yaml.safe_load(tar.extractfile("tokenforge-results/config.yaml"))
    # what the package stage bundles, so the checks below cover every kind of file a pipeline bundle holds
    assert {"metrics.json", "config.yaml", "model.safetensors", "model.json", "report.html", "accuracy_matrix.png",
            "reconstructions.png", "versions.json"} <= set(names), names
    assert config["run"] == "fixture-run" and expected["final_average_accuracy"] == pytest.approx((0.71 + 0.86) / 2)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("backfill").experiment_id])
    assert run.info.run_name == config["run"]
    assert run.data.metrics["final_average_accuracy"] == expected["final_average_accuracy"]
    assert run.data.metrics["memory_bytes"] == expected["bytes"]["memory"] == 1800
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == names
    capsys.readouterr()
    assert tokenforge(["compare", "--tracking-uri", uri, "--experiment", "backfill"]) == 0
    (row,) = table(capsys.readouterr().out)
    assert row["final_average_accuracy"] == f"{100 * expected['final_average_accuracy']:.2f}%"
