"""`tokenforge summary RESULTS_DIR` on a hand-written metrics.json."""

import json
from pathlib import Path

import pytest

from tokenforge import cli
from tokenforge.report import summary

METRICS = {
    "num_tasks": 3,
    "accuracy_matrix": [[0.9, 0.2, 0.1], [0.7, 0.8, 0.3], [0.5, 0.6, 0.9]],
    "average_accuracy": [0.9, 0.75, 0.6666666666666666],
    "final_average_accuracy": 0.6666666666666666,
    "average_forgetting": 0.3,
    "backward_transfer": -0.3,
    "bytes": {"memory": 3300, "memory_per_task": [1000, 2100, 3300], "dataset_images": 100,
              "dataset_tokens": 115000, "tokens_per_image": 1150.0},
    "wall_time_s": {"shard": 1.0, "total": 1.0},
}


@pytest.fixture
def tokenforge(monkeypatch):
    # Only this module's subcommands: the other stages are written alongside and need not import.
    monkeypatch.setattr(cli, "STAGES", ("package", "summary"))
    return cli.main


@pytest.fixture
def results(tmp_path) -> Path:
    (tmp_path / "package").mkdir()
    (tmp_path / "package/metrics.json").write_text(json.dumps(METRICS))
    return tmp_path


def test_human_summary(results, tokenforge, capsys):
    assert tokenforge(["summary", str(results)]) == 0
    out = capsys.readouterr().out
    assert "3 tasks" in out
    assert "final average accuracy: 66.67%" in out
    assert "average forgetting:     30.00%" in out
    assert "backward transfer:      -30.00%" in out
    assert "3,300 bytes" in out
    assert "33.0 bytes per dataset image = 2.87% of the token bytes" in out  # 3300 / 115000
    assert str(results.resolve() / "package" / "report.html") in out
    assert str(results.resolve() / "tokenforge-results.tar.gz") + " (not written yet)" in out
    assert "MLflow:                 not tracked" in out


def test_relative_results_dir_prints_absolute_paths(results, tokenforge, capsys, monkeypatch):
    monkeypatch.chdir(results.parent)
    (results / "tokenforge-results.tar.gz").write_bytes(b"x")
    assert tokenforge(["summary", results.name]) == 0
    out = capsys.readouterr().out
    assert f"bundle:                 {results.resolve() / 'tokenforge-results.tar.gz'}\n" in out


def test_mlflow_sqlite_store(results, tokenforge, capsys):
    uri = f"sqlite:///{results}/mlflow/mlflow.db"
    (results / "mlflow").mkdir()
    (results / "mlflow/parent.json").write_text(
        json.dumps({"tracking_uri": uri, "experiment_id": "7", "parent_run_id": "abc123"}))
    assert tokenforge(["summary", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"MLflow tracking URI:    {uri}" in out
    assert "MLflow parent run id:   abc123" in out
    assert f"mlflow ui --backend-store-uri {uri}" in out


def test_mlflow_server_uri():
    lines = summary.mlflow_lines({"tracking_uri": "http://mlflow:5000", "experiment_id": "1", "parent_run_id": "p"})
    assert any("http://mlflow:5000 in a browser" in line for line in lines)
    assert not any("mlflow ui" in line for line in lines)


def test_json_prints_metrics(results, tokenforge, capsys):
    assert tokenforge(["summary", str(results), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == METRICS


def test_unfinished_pipeline(tmp_path, tokenforge, capsys):
    assert tokenforge(["summary", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokenforge summary: error: ")
    assert "package/metrics.json: not found; the pipeline has not finished" in err
    assert "make run" in err and "snakemake" in err and "\n" not in err


def test_incomplete_metrics(results, tokenforge, capsys):
    (results / "package/metrics.json").write_text(json.dumps({"num_tasks": 3}))
    assert tokenforge(["summary", str(results)]) == 2
    assert "metrics.json: missing key 'final_average_accuracy'" in capsys.readouterr().err


def test_bad_parent_json(results, tokenforge, capsys):
    (results / "mlflow").mkdir()
    (results / "mlflow/parent.json").write_text("{not json")
    assert tokenforge(["summary", str(results)]) == 2
    assert "parent.json: not valid JSON" in capsys.readouterr().err


def test_memory_line_names_the_method_and_budget():
    b = {"memory": 1863, "dataset_images": 1797, "dataset_tokens": 24388}
    line = summary.memory_lines(b, {"method": "coretokenset", "budget_bytes": 1868, "samples": 103, "tokens_per_sample": 8})[0]
    assert line.endswith("1,863 bytes after the last task (coretokenset: 103 samples x 8 tokens, budget 1,868)")
    assert summary.memory_lines(b)[0].endswith("bytes after the last task")  # older metrics.json: no memory entry


def test_control_lines_show_the_headline_per_task_and_the_other_scores():
    """A captioning run beside its blind control: CIDEr-D per task (just learned, after the last, blind), then each
    other score's final average against the control's (count accuracy, which a blind model cannot get)."""
    cider = [[0.1, 0.0], [0.4, 0.5]]
    count = [[0.0, 0.0], [0.2, 0.3]]
    result = {**METRICS, "num_tasks": 2, "accuracy_matrix": cider, "metric": "cider", "groups": [["cube"], ["cone"]],
              "score_matrices": {"cider": {"accuracy_matrix": cider, "final_average_accuracy": 0.45},
                                 "count_accuracy": {"accuracy_matrix": count, "final_average_accuracy": 0.25}},
              "controls": {"blind": {"scores": {"cider": [0.3, 0.2], "count_accuracy": [0.0, 0.0]},
                                     "average_scores": {"cider": 0.25, "count_accuracy": 0.0}}}}  # fmt: skip
    lines = summary.control_lines(result)
    assert lines[0] == "  cider against the blind control (trained on every task at once)"
    assert lines[2].split() == ["0", "(cube)", "0.100", "0.400", "0.300", "-0.200"]
    assert lines[3].split() == ["1", "(cone)", "0.500", "0.500", "0.200", "+0.300"]
    assert lines[4].split() == ["average", "0.300", "0.450", "0.250", "+0.050"]
    assert lines[5].split() == ["count_accuracy:", "final", "average", "0.250,", "blind", "0.000"]
    assert summary.control_lines(METRICS) == []  # a run without controls
