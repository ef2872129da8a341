"""`tokenforge package` on synthetic evaluation and stats files."""

import argparse
import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tokenforge import cli
from tokenforge.cli import package as package_cli
from tokenforge.errors import TokenforgeError
from tokenforge.report import package

R = [[0.9, 0.2, 0.1], [0.7, 0.8, 0.3], [0.5, 0.6, 0.9]]
TRAIN, TEST = 60, 15  # images; dataset totals are bytes per image x 75
TOKEN_BYTES = 1150.5
MEMORY = [1000, 2100, 3300]


@pytest.fixture
def tokenforge(monkeypatch):
    # Only this module's subcommands: the other stages are written alongside and need not import.
    monkeypatch.setattr(cli, "STAGES", ("package", "summary"))
    return cli.main


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def make_inputs(root: Path, matrix=R) -> dict:
    """Evaluation, stats, model and config files as the other stages write them."""
    n = len(matrix)
    evaluations = [
        _write(
            root / f"evaluate/task-{t}/evaluation.json",
            {"task": t, "accuracy": row, "num_test": [5] * n, "seen_classes": list(range(2 * (t + 1)))},
        )
        for t, row in enumerate(matrix)
    ]
    stats = {
        "shard": {"wall_s": 1.5, "raw_bytes_per_image": 3072, "png_bytes_per_image": 2500.0,
                  "shard_bytes_per_image": 3000.0, "counts": {"train": TRAIN, "test": TEST}},
        "tokenizer": {"wall_s": 10.0, "psnr": 24.5, "codebook_usage": 0.75, "mse": 0.01},
        "tokenize": {"wall_s": 2.0, "bytes_per_image": {"raw_pixels": 3072, "pixel_shards": 3000.0,
                                                        "tokens": TOKEN_BYTES}, "grid": [8, 8]},
    }
    for t in range(n):
        stats[f"train-{t}"] = {"wall_s": 3.0 + t, "memory_bytes": MEMORY[t], "memory_samples": 10,
                               "memory_tokens_per_sample": 8, "final_loss": 0.5}
        stats[f"evaluate-{t}"] = {"wall_s": 0.25}
    stats_args = [f"{name}={_write(root / name / 'stats.json', obj)}" for name, obj in stats.items()]
    model = root / "train/model.safetensors"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"not really safetensors")
    config = root / "config.yaml"
    config.write_text("title: <b>run & test</b>\nnum_tasks: 3\n")
    return {"evaluations": evaluations, "stats": stats_args, "model": model, "config": config}


def argv(inputs: dict, out: Path, archive: Path, title="test run") -> list[str]:
    return (
        ["package", "-q", "--evaluations", *map(str, inputs["evaluations"]), "--stats", *inputs["stats"],
         "--model", str(inputs["model"]), "--config", str(inputs["config"]),
         "--out", str(out), "--archive", str(archive), "--title", title]
    )


@pytest.fixture
def bundle(tmp_path, tokenforge):
    inputs = make_inputs(tmp_path / "in")
    out, archive = tmp_path / "package", tmp_path / "tokenforge-results.tar.gz"
    assert tokenforge(argv(inputs, out, archive)) == 0
    return out, archive


def test_bundle_has_every_file(bundle):
    out, archive = bundle
    for name in ("metrics.json", "accuracy_matrix.csv", "accuracy_matrix.png", "average_accuracy.png",
                 "report.html", "model.safetensors", "config.yaml", "versions.json", "stats.json"):
        assert (out / name).is_file(), name
    assert archive.is_file()
    assert (out / "model.safetensors").read_bytes() == b"not really safetensors"
    assert (out / "accuracy_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_tasks"] == 3 and stats["wall_s"] >= 0 and stats["archive_bytes"] == archive.stat().st_size


def test_metrics_json_values(bundle):
    m = json.loads((bundle[0] / "metrics.json").read_text())
    assert m["accuracy_matrix"] == R
    assert m["average_accuracy"] == pytest.approx([0.9, 0.75, 2 / 3])
    assert m["final_average_accuracy"] == pytest.approx(2 / 3)
    assert m["average_forgetting"] == pytest.approx(0.3)
    assert m["backward_transfer"] == pytest.approx(-0.3)
    b = m["bytes"]
    assert b["tokens_per_image"] == TOKEN_BYTES and b["raw_pixels_per_image"] == 3072
    assert b["dataset_tokens"] == round(TOKEN_BYTES * (TRAIN + TEST))
    assert b["dataset_raw_pixels"] == 3072 * 75 and b["dataset_pixel_shards"] == 3000 * 75
    assert b["memory"] == MEMORY[-1] and b["memory_per_task"] == MEMORY
    wall = m["wall_time_s"]
    assert wall["shard"] == 1.5 and wall["train-2"] == 5.0
    assert wall["total"] == pytest.approx(1.5 + 10 + 2 + 3 + 4 + 5 + 3 * 0.25)
    assert m["tokenizer"] == {"psnr": 24.5, "codebook_usage": 0.75}


def test_accuracy_matrix_csv(bundle):
    with (bundle[0] / "accuracy_matrix.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["after_task", "task_0", "task_1", "task_2"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    assert [[float(v) for v in r[1:]] for r in rows[1:]] == R


def test_report_is_self_contained(bundle):
    page = (bundle[0] / "report.html").read_text()
    assert "<title>test run</title>" in page
    assert page.count('<img src="data:image/png;base64,') == 2
    assert "66.67%" in page  # final average accuracy
    assert "30.00%" in page and "-30.00%" in page  # forgetting, backward transfer
    assert "0.8000" in page  # a matrix cell
    assert "3,300 B" in page  # memory after the last task
    assert "train-2" in page  # wall-time table
    assert "&lt;b&gt;run &amp; test&lt;/b&gt;" in page and "<b>run" not in page  # config escaped
    assert "numpy" in page  # versions
    assert 'src="http' not in page and "<link" not in page


def test_tasks_not_trained_yet_are_empty_in_the_report_table(bundle):
    # Row t is measured after training task t: cells j > t are tasks not learned yet (0.2, 0.1, 0.3 in R).
    page = (bundle[0] / "report.html").read_text()
    table = page[page.index("<h3>Accuracy matrix"):]
    table = table[: table.index("</table>")]
    rows = [row.split("</td><td>") for row in table.split("<tr><td>")[1:]]
    cells = [[cell.removesuffix("</td></tr>").removesuffix("</td></tr></tbody>") for cell in row] for row in rows]
    assert cells == [
        ["0", "0.9000", "", ""],
        ["1", "0.7000", "0.8000", ""],
        ["2", "0.5000", "0.6000", "0.9000"],
    ]


def test_tasks_not_trained_yet_are_empty_in_the_plot(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(package, "_save", lambda fig, path: figures.append(fig))
    package.plot_accuracy_matrix(np.array(R), tmp_path / "m.png")
    (ax, _colorbar) = figures[0].axes
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert texts == {(0, 0): "0.90", (1, 0): "0.70", (1, 1): "0.80", (2, 0): "0.50", (2, 1): "0.60", (2, 2): "0.90"}
    shown = ax.images[0].get_array()
    assert shown.mask.tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    assert shown.data.tolist() == R  # masked, not changed


def test_versions_json(bundle):
    versions = json.loads((bundle[0] / "versions.json").read_text())
    assert versions["python"] and versions["platform"]
    assert set(versions["packages"]) == set(package.PACKAGES)
    assert versions["packages"]["numpy"] == np.__version__


def test_archive_holds_the_bundle(bundle):
    out, archive = bundle
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert all(name.startswith("tokenforge-results/") for name in names)
        files = {Path(n).name for n in names}
        assert tar.extractfile("tokenforge-results/metrics.json").read() == (out / "metrics.json").read_bytes()
    assert files == {p.name for p in out.iterdir()} - {".tokenforge", "stats.json"}


def test_same_inputs_give_identical_bytes(bundle, tmp_path, tokenforge):
    out, archive = bundle
    inputs = make_inputs(tmp_path / "in")
    out2, archive2 = tmp_path / "again/package", tmp_path / "again/tokenforge-results.tar.gz"
    assert tokenforge(argv(inputs, out2, archive2)) == 0
    assert archive2.read_bytes() == archive.read_bytes()
    for name in ("metrics.json", "report.html", "accuracy_matrix.png", "average_accuracy.png"):
        assert (out2 / name).read_bytes() == (out / name).read_bytes(), name


def test_rerun_replaces_its_own_output(bundle, tmp_path, tokenforge):
    out, archive = bundle
    inputs = make_inputs(tmp_path / "in", matrix=[[0.4, 0.1, 0.0], [0.3, 0.6, 0.1], [0.2, 0.5, 0.7]])
    assert tokenforge(argv(inputs, out, archive)) == 0
    assert json.loads((out / "metrics.json").read_text())["accuracy_matrix"][0][0] == 0.4


def test_evaluations_in_any_order(tmp_path):
    inputs = make_inputs(tmp_path)
    matrix = package.load_accuracy_matrix(list(reversed(inputs["evaluations"])))
    assert matrix.tolist() == R


def test_single_task(tmp_path, tokenforge):
    inputs = make_inputs(tmp_path / "in", matrix=[[0.8]])
    assert tokenforge(argv(inputs, tmp_path / "out", tmp_path / "r.tgz")) == 0
    m = json.loads((tmp_path / "out/metrics.json").read_text())
    assert m["average_forgetting"] == 0.0 and m["bytes"]["memory_per_task"] == [1000]
    with tarfile.open(tmp_path / "r.tgz") as tar:
        assert "r/report.html" in tar.getnames()


class Recorder:
    def __init__(self):
        self.metrics, self.artifacts, self.params = [], [], {}

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append((metrics, step))

    def log_artifact(self, path, artifact_path=None):
        assert Path(path).is_file()
        self.artifacts.append(Path(path).name)

    def set_tags(self, tags):
        pass


def test_logs_metrics_and_artifacts(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    args = argparse.Namespace(
        evaluations=inputs["evaluations"], stats=inputs["stats"], model=inputs["model"], config=inputs["config"],
        out=tmp_path / "out", archive=tmp_path / "a.tar.gz", title="t", images=[],
    )
    tracker = Recorder()
    package_cli.run(args, tracker)
    headline = tracker.metrics[0][0]
    assert headline["final_average_accuracy"] == pytest.approx(2 / 3) and headline["memory_bytes"] == 3300
    assert [(m["average_accuracy"], step) for m, step in tracker.metrics[1:]] == [
        (pytest.approx(0.9), 0), (pytest.approx(0.75), 1), (pytest.approx(2 / 3), 2)]
    assert {"report.html", "accuracy_matrix.png", "average_accuracy.png", "metrics.json"} <= set(tracker.artifacts)
    assert tracker.params == {"num_tasks": 3}


def png(path: Path, size=(12, 4)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.arange(size[0] * size[1], dtype=np.uint8).reshape(size[1], size[0])).save(path, format="PNG")
    return path


def test_images_are_bundled_and_shown(tmp_path, tokenforge):
    inputs = make_inputs(tmp_path / "in")
    recon = png(tmp_path / "in/tokenizer/reconstructions.png")
    extra = png(tmp_path / "in/other.png", size=(3, 3))
    out, archive = tmp_path / "package", tmp_path / "r.tar.gz"
    args = argv(inputs, out, archive) + ["--images", f"reconstructions={recon}", f"codes-2={extra}"]
    assert tokenforge(args) == 0
    assert (out / "reconstructions.png").read_bytes() == recon.read_bytes()
    assert (out / "codes-2.png").read_bytes() == extra.read_bytes()
    page = (out / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 4
    assert "<figcaption>reconstructions</figcaption>" in page and "<figcaption>codes-2</figcaption>" in page
    assert page.index("reconstructions</figcaption>") < page.index("codes-2</figcaption>")  # in the order given
    with tarfile.open(archive) as tar:
        assert "r/reconstructions.png" in tar.getnames() and "r/codes-2.png" in tar.getnames()


def test_images_are_logged(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    recon = png(tmp_path / "in/reconstructions.png")
    args = argparse.Namespace(
        evaluations=inputs["evaluations"], stats=inputs["stats"], model=inputs["model"], config=inputs["config"],
        out=tmp_path / "out", archive=tmp_path / "a.tar.gz", title="t", images=[f"reconstructions={recon}"],
    )
    tracker = Recorder()
    package_cli.run(args, tracker)
    assert "reconstructions.png" in tracker.artifacts


def test_tokenizer_pruning_numbers_are_reported(tmp_path, tokenforge):
    inputs = make_inputs(tmp_path / "in")
    _write(tmp_path / "in/tokenizer/stats.json", {"wall_s": 10.0, "psnr": 24.5, "codebook_usage": 0.0477,
                                                   "used_codes": 391, "codebook_size": 391,
                                                   "trained_codebook_size": 8192, "perplexity": 300.25})
    out = tmp_path / "out"
    assert tokenforge(argv(inputs, out, tmp_path / "a.tar.gz")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["tokenizer"] == {"psnr": 24.5, "codebook_usage": 0.0477, "used_codes": 391, "codebook_size": 391,
                              "trained_codebook_size": 8192, "perplexity": 300.25}
    page = (out / "report.html").read_text()
    assert "391 of 8,192 trained" in page and "4.77%" in page and "300.2" in page


def test_imported_tokens_without_shard_or_tokenizer(tmp_path, tokenforge):
    # A seit: source: tokens imported from a SeiT release, so no shard or tokenizer stage ran.
    inputs = make_inputs(tmp_path / "in")
    inputs["stats"] = [item for item in inputs["stats"] if not item.startswith(("shard=", "tokenizer="))]
    _write(tmp_path / "in/tokenize/stats.json", {"wall_s": 2.0, "counts": {"train": 50, "test": 10},
                                                  "bytes_per_image": {"tokens": 20.0, "seit": 25.0}})
    out = tmp_path / "out"
    assert tokenforge(argv(inputs, out, tmp_path / "a.tar.gz")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["tokenizer"] is None
    b = m["bytes"]
    assert b["dataset_images"] == 60 and b["dataset_tokens"] == 1200 and b["tokens_per_image"] == 20.0
    assert b["raw_pixels_per_image"] is None and b["dataset_pixel_shards"] is None
    page = (out / "report.html").read_text()
    assert "<td>VQ tokens</td>" in page and "<td>raw pixels</td>" not in page and "tokenizer PSNR" not in page
    assert "shard" not in m["wall_time_s"] and m["wall_time_s"]["tokenize"] == 2.0


def test_archive_root_names():
    assert package.archive_root(Path("x/tokenforge-results.tar.gz")) == "tokenforge-results"
    assert package.archive_root(Path("r.tgz")) == "r"
    assert package.archive_root(Path("bundle.tar")) == "bundle"


# --- bad input: exit status 2 and one line naming the file or option ---------------------------


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("tokenforge package: error: ")
    return err[0]


def _run_bad(tmp_path, tokenforge, capsys, edit) -> str:
    inputs = make_inputs(tmp_path / "in")
    edit(inputs)
    out = tmp_path / "out"
    assert tokenforge(argv(inputs, out, tmp_path / "a.tar.gz")) == 2
    assert not out.exists() and not (tmp_path / "a.tar.gz").exists()  # nothing half-written
    return _error(capsys)


def test_missing_evaluation_file(tmp_path, tokenforge, capsys):
    def edit(inputs):
        inputs["evaluations"][1].unlink()

    assert "evaluate/task-1/evaluation.json: no such file" in _run_bad(tmp_path, tokenforge, capsys, edit)


def test_duplicate_task(tmp_path, tokenforge, capsys):
    def edit(inputs):
        _write(inputs["evaluations"][2], {"task": 1, "accuracy": R[2]})

    assert "task 1 is given twice" in _run_bad(tmp_path, tokenforge, capsys, edit)


def test_tasks_not_0_to_n_minus_1(tmp_path, tokenforge, capsys):
    def edit(inputs):
        _write(inputs["evaluations"][2], {"task": 5, "accuracy": R[2]})

    assert "no evaluation for task(s) [2]" in _run_bad(tmp_path, tokenforge, capsys, edit)


def test_rows_of_inconsistent_length(tmp_path, tokenforge, capsys):
    def edit(inputs):
        _write(inputs["evaluations"][1], {"task": 1, "accuracy": [0.5, 0.5]})

    line = _run_bad(tmp_path, tokenforge, capsys, edit)
    assert "task-1/evaluation.json: 'accuracy' has 2 entries but 3 evaluation files" in line


def test_accuracy_out_of_range(tmp_path, tokenforge, capsys):
    def edit(inputs):
        _write(inputs["evaluations"][0], {"task": 0, "accuracy": [90, 20, 10]})

    assert "'accuracy' must be a list of accuracies in [0, 1]" in _run_bad(tmp_path, tokenforge, capsys, edit)


def test_missing_stats_file(tmp_path, tokenforge, capsys):
    def edit(inputs):
        (tmp_path / "in/tokenizer/stats.json").unlink()

    assert "tokenizer/stats.json: no such file" in _run_bad(tmp_path, tokenforge, capsys, edit)


def test_missing_stats_name(tmp_path, tokenforge, capsys):
    def edit(inputs):
        inputs["stats"] = [s for s in inputs["stats"] if not s.startswith("train-2=")]

    assert "--stats: no train-2=FILE given" in _run_bad(tmp_path, tokenforge, capsys, edit)


def test_missing_stats_key(tmp_path, tokenforge, capsys):
    def edit(inputs):
        _write(tmp_path / "in/tokenize/stats.json", {"wall_s": 1.0, "bytes_per_image": {"raw_pixels": 1}})

    assert "tokenize/stats.json: missing key 'bytes_per_image.pixel_shards'" in _run_bad(
        tmp_path, tokenforge, capsys, edit)


def test_stats_without_wall_time(tmp_path, tokenforge, capsys):
    def edit(inputs):
        _write(tmp_path / "in/evaluate-0/stats.json", {})

    assert "evaluate-0/stats.json: 'wall_s' must be a number" in _run_bad(tmp_path, tokenforge, capsys, edit)


@pytest.mark.parametrize("item, message", [("shard", "expected NAME=FILE"), ("=x.json", "expected NAME=FILE"),
                                           ("shard=a.json", "--stats shard: given twice")])
def test_bad_stats_option(tmp_path, tokenforge, capsys, item, message):
    def edit(inputs):
        inputs["stats"].append(item)

    assert message in _run_bad(tmp_path, tokenforge, capsys, edit)


def test_missing_model(tmp_path, tokenforge, capsys):
    def edit(inputs):
        inputs["model"].unlink()

    assert "model.safetensors: model file not found" in _run_bad(tmp_path, tokenforge, capsys, edit)


def test_archive_inside_out_is_refused(tmp_path, tokenforge, capsys):
    inputs = make_inputs(tmp_path / "in")
    assert tokenforge(argv(inputs, tmp_path / "out", tmp_path / "out/a.tar.gz")) == 2
    assert "must lie outside --out" in _error(capsys)


@pytest.mark.parametrize("item, message", [
    ("reconstructions", "--images 'reconstructions': expected NAME=FILE"),
    ("../x={png}", "--images '../x="),
    ("={png}", "expected NAME=FILE"),
    ("accuracy_matrix={png}", "--images accuracy_matrix: is a name the bundle uses"),
    ("a={png} a={png}", "--images a: given twice"),
    ("a={missing}", "missing.png: image not found"),
    ("a={text}", "notes.txt: not a PNG image"),
])
def test_bad_images_option(tmp_path, tokenforge, capsys, item, message):
    files = {"png": png(tmp_path / "ok.png"), "missing": tmp_path / "missing.png", "text": tmp_path / "notes.txt"}
    files["text"].write_text("not an image")
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert tokenforge(argv(inputs, out, tmp_path / "a.tar.gz") + ["--images", *item.format(**files).split()]) == 2
    assert not out.exists() and not (tmp_path / "a.tar.gz").exists()
    assert message in _error(capsys)


def test_unit_errors_name_the_file(tmp_path):
    bad = _write(tmp_path / "e.json", ["not", "an", "object"])
    with pytest.raises(TokenforgeError, match="e.json: expected a JSON object"):
        package.load_accuracy_matrix([bad])


def vqa_inputs(root: Path) -> dict:
    """A VQA run's inputs (evaluations with scores and groups) and its blind control's evaluation."""
    inputs = make_inputs(root)
    for t, path in enumerate(inputs["evaluations"]):
        data = json.loads(path.read_text())
        _write(path, {**data, "metric": "vqa_accuracy", "scores": {"vqa_accuracy": R[t]}, "groups": [["color"], ["shape"], ["count"]]})
    blind = {"task": 2, "accuracy": [0.1, 0.3, 0.6], "metric": "vqa_accuracy", "scores": {"vqa_accuracy": [0.1, 0.3, 0.6]}}
    return {**inputs, "blind": _write(root / "control/blind/evaluate.json", blind)}


def test_controls_are_shown_beside_the_run(tmp_path, tokenforge, capsys):
    """--controls blind=FILE: the blind control's scores in metrics.json, the report and the summary, per task
    beside the run's just after learning it (R[j][j]) and after the last task (R[N-1][j])."""
    inputs = vqa_inputs(tmp_path / "in")
    out = tmp_path / "package"
    assert tokenforge(argv(inputs, out, tmp_path / "r.tar.gz") + ["--controls", f"blind={inputs['blind']}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["controls"]["blind"]["scores"] == {"vqa_accuracy": [0.1, 0.3, 0.6]}
    assert m["controls"]["blind"]["average_scores"]["vqa_accuracy"] == pytest.approx(1 / 3)
    page = (out / "report.html").read_text()
    assert "vqa_accuracy against the blind control" in page and "<td>0 (color)</td><td>0.9000</td><td>0.5000</td><td>0.1000</td><td>+0.8000</td>" in page
    assert tokenforge(["summary", str(tmp_path)]) == 0  # the summary reads <results>/package/metrics.json
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if "vqa_accuracy against the blind control" in line)
    assert lines[at + 2].split() == ["0", "(color)", "0.900", "0.500", "0.100", "+0.800"]
    assert lines[at + 4].split() == ["2", "(count)", "0.900", "0.900", "0.600", "+0.300"]
    assert lines[at + 5].split() == ["average", "0.867", "0.667", "0.333", "+0.533"]


def test_controls_are_logged(tmp_path):
    inputs = vqa_inputs(tmp_path / "in")
    args = argparse.Namespace(
        evaluations=inputs["evaluations"], stats=inputs["stats"], model=inputs["model"], config=inputs["config"],
        out=tmp_path / "out", archive=tmp_path / "a.tar.gz", title="t", images=[], controls=[f"blind={inputs['blind']}"],
    )
    tracker = Recorder()
    package_cli.run(args, tracker)
    logged = {k: v for metrics, _ in tracker.metrics for k, v in metrics.items()}
    assert logged["control_blind_vqa_accuracy"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("edit, message", [
    (lambda blind: {**blind, "accuracy": [0.1, 0.3], "scores": {"vqa_accuracy": [0.1, 0.3]}}, "scores 2 tasks; the run has 3"),
    (lambda blind: {**blind, "metric": "cider"}, "its metric is 'cider'; the run's is 'vqa_accuracy'"),
    (lambda blind: {**blind, "accuracy": [0.1, 0.3, 1.5]}, "'accuracy' must be a list of vqa_accuracy in [0, 1]"),
])
def test_bad_controls_are_refused(tmp_path, tokenforge, capsys, edit, message):
    inputs = vqa_inputs(tmp_path / "in")
    _write(inputs["blind"], edit(json.loads(inputs["blind"].read_text())))
    out = tmp_path / "out"
    assert tokenforge(argv(inputs, out, tmp_path / "a.tar.gz") + ["--controls", f"blind={inputs['blind']}"]) == 2
    assert not out.exists() and not (tmp_path / "a.tar.gz").exists()
    error = _error(capsys)
    assert "control/blind/evaluate.json" in error and message in error
