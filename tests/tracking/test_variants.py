"""An experiment's variants in MLflow (tracking/variants.py): `tokenforge track start E --variants E/experiment.json`
makes one run per variant under E's parent run, the jobs of a variant's folder nest under its run and shared jobs
under the parent, all in E's store, live and deferred; `track end E` ends them all, with each variant's metrics."""

import argparse
import json
from pathlib import Path

import pytest
import yaml

from tokenforge.cli import main
from tokenforge.tracking.runs import child_run, start_parent
from tokenforge.tracking.spool import SPOOL

GRID = [("coreset", 0), ("coreset", 1), ("random", 0), ("random", 1)]
HEADLINES = {"final_average_accuracy", "average_forgetting", "backward_transfer", "memory_bytes"}


@pytest.fixture(autouse=True)
def _no_ambient_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def name_of(method: str, seed: int) -> str:
    return f"method-{method}_seed-{seed}"


def experiment(tmp_path: Path) -> Path:
    """E with experiment.json (2 methods x 2 seeds), its config and each variant's resolved config."""
    e = tmp_path / "results" / "coretokens"
    variants = [
        {"name": name_of(m, s), "dir": f"runs/{name_of(m, s)}", "params": {"memory.method": m, "seed": s},
         "group": f"method-{m}", "seed": s}
        for m, s in GRID
    ]  # fmt: skip
    e.mkdir(parents=True)
    (e / "experiment.json").write_text(json.dumps({"experiment": "coretokens", "axes": ["memory.method", "seed"], "variants": variants}))
    (e / "config.resolved.yaml").write_text(yaml.safe_dump({"run": "coretokens", "memory": {"budget": "5%"}}))
    for m, s in GRID:
        folder = e / "runs" / name_of(m, s)
        folder.mkdir(parents=True)
        (folder / "config.resolved.yaml").write_text(yaml.safe_dump({"memory": {"method": m, "budget": "5%"}, "seed": s}))
    return e


def track(*args) -> None:
    assert main(["track", *map(str, args), "-q"]) == 0


def start(e: Path, mode: str) -> None:
    track("start", e, "--config", e / "config.resolved.yaml", "--experiment", "exp", "--mode", mode,
          "--variants", e / "experiment.json")  # fmt: skip


def job(results: Path, rule: str, **tags) -> None:
    """A job as the CLI runs it with `--track results`."""
    with child_run(results, rule, tags, argparse.Namespace(epochs=1)) as tracker:
        tracker.log_metrics({"wall_s": 1.0})


def package(e: Path, i: int) -> None:
    """Variant i's package job: its run, and its metrics.json."""
    folder = e / "runs" / name_of(*GRID[i])
    job(folder, "package")
    (folder / "package").mkdir()
    metrics = {"final_average_accuracy": 0.5 + i / 10, "average_forgetting": 0.1, "backward_transfer": -0.05,
               "bytes": {"memory": 1000 * (i + 1)}}  # fmt: skip
    (folder / "package" / "metrics.json").write_text(json.dumps(metrics))


def store(e: Path):
    """E's client and every run in its experiment, by id."""
    from mlflow import MlflowClient

    info = json.loads((e / "mlflow" / "parent.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    return client, info, {r.info.run_id: r for r in client.search_runs([info["experiment_id"]], max_results=1000)}


def parent_of(run) -> str | None:
    return run.data.tags.get("mlflow.parentRunId")


@pytest.mark.parametrize("mode", ["live", "deferred"])
def test_variants_nest_under_the_parent_and_their_jobs_under_them(tmp_path, mode):
    e = experiment(tmp_path)
    start(e, mode)
    job(e, "shard")  # shared by every variant
    for i in range(3):  # the fourth variant runs no job
        job(e / "runs" / name_of(*GRID[i]), "train", task="0")
        package(e, i)
    if mode == "deferred":
        track("sync", e / "runs" / name_of(*GRID[0]))  # by hand, from a variant's folder: the experiment's spool
        client, info, runs = store(e)
        assert {r.info.status for r in runs.values() if "variant" in r.data.tags and "rule" not in r.data.tags} == {"RUNNING"}
        assert json.loads((e / "runs" / name_of(*GRID[0]) / "mlflow" / "parent.json").read_text())["parent_run_id"]
    track("end", e, "--status", "FINISHED")  # all the onsuccess hook gives

    client, info, runs = store(e)
    [parent] = [r for r in runs.values() if parent_of(r) is None]
    assert parent.info.run_id == info["parent_run_id"] and parent.info.run_name == "coretokens"
    assert parent.info.status == "FINISHED" and parent.data.params["memory.budget"] == "5%"
    variants = {r.info.run_name: r for r in runs.values() if parent_of(r) == parent.info.run_id and "rule" not in r.data.tags}
    assert sorted(variants) == sorted(name_of(m, s) for m, s in GRID)
    for i, (method, seed) in enumerate(GRID):
        run = variants[name_of(method, seed)]
        assert run.info.status == "FINISHED"
        assert run.data.params == {"memory.method": method, "seed": str(seed), "memory.budget": "5%"}
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
        assert tags == {"variant": name_of(method, seed), "variant_group": f"method-{method}", "grid.memory.method": method,
                        "grid.seed": str(seed)}  # fmt: skip
        if i < 3:
            assert set(run.data.metrics) == HEADLINES and run.data.metrics["memory_bytes"] == 1000 * (i + 1)
            assert run.data.metrics["final_average_accuracy"] == pytest.approx(0.5 + i / 10)
        else:
            assert run.data.metrics == {}  # none of its jobs ran: ended all the same
        jobs = [r for r in runs.values() if parent_of(r) == run.info.run_id]
        assert sorted(r.data.tags["rule"] for r in jobs) == ([] if i == 3 else ["package", "train"])
        assert all(r.data.tags["variant"] == run.info.run_name and r.info.status == "FINISHED" for r in jobs)
    [shared] = [r for r in runs.values() if r.data.tags.get("rule") == "shard"]
    assert parent_of(shared) == parent.info.run_id and "variant" not in shared.data.tags
    assert len(runs) == 1 + 4 + 6 + 1
    # one store, E's: nothing in the variant folders but their parent.json
    assert not list((e / "runs").rglob("mlflow.db")) and not list((e / "runs").rglob("spool"))


@pytest.mark.parametrize("mode", ["live", "deferred"])
def test_the_parent_files_of_the_variants(tmp_path, mode):
    e = experiment(tmp_path)
    start(e, mode)
    top = json.loads((e / "mlflow" / "parent.json").read_text())
    assert [v["name"] for v in top["variants"]] == [name_of(m, s) for m, s in GRID]
    own = json.loads((e / "runs" / name_of(*GRID[1]) / "mlflow" / "parent.json").read_text())
    assert own["mode"] == mode and own["tracking_uri"] == top["tracking_uri"] == f"sqlite:///{e.resolve() / 'mlflow.db'}"
    assert own["variant"] == name_of(*GRID[1]) and own["experiment_dir"] == "../.."
    if mode == "live":
        assert own["experiment_run_id"] == top["parent_run_id"] and own["experiment_id"] == top["experiment_id"]
        assert own["parent_run_id"] == top["variants"][1]["run_id"]
    else:
        assert own["spool"] == top["spool"] and "parent_run_id" not in own
        assert set(top["variants"][1]) == {"name", "dir"}  # params and tags are in the spool folder's parent.json
        spooled = json.loads((e / SPOOL / top["spool"] / "parent.json").read_text())
        assert spooled["variants"][1]["params"]["memory.method"] == "coreset"


@pytest.mark.parametrize("mode", ["live", "deferred"])
def test_a_resumed_invocation_gets_a_new_parent_and_fresh_variant_runs(tmp_path, mode):
    e = experiment(tmp_path)
    first_variant = e / "runs" / name_of(*GRID[0])
    start(e, mode)
    job(first_variant, "train", task="0")
    start(e, mode)  # Snakemake was killed before its onerror hook, then run again
    job(first_variant, "train", task="1")
    track("end", e, "--status", "FINISHED")

    client, info, runs = store(e)
    parents = sorted((r for r in runs.values() if parent_of(r) is None), key=lambda r: r.info.start_time)
    assert len(parents) == 2 and parents[1].info.run_id == info["parent_run_id"]
    earlier = "KILLED" if mode == "deferred" else "RUNNING"  # as a single run's earlier parent (live: never ended)
    assert [p.info.status for p in parents] == [earlier, "FINISHED"]
    for parent, status, task in zip(parents, [earlier, "FINISHED"], "01"):
        variants = {r.info.run_name: r for r in runs.values() if parent_of(r) == parent.info.run_id}
        assert len(variants) == 4 and {v.info.status for v in variants.values()} == {status}
        [train] = [r for r in runs.values() if parent_of(r) == variants[name_of(*GRID[0])].info.run_id]
        assert train.data.tags["task"] == task


def test_a_single_run_stays_as_it_was(tmp_path):
    """No variants (nor a grid of one, whose variant is E itself): parent.json and the spool lines as before."""
    e = tmp_path / "run"
    e.mkdir()
    (e / "experiment.json").write_text(json.dumps({"variants": [{"name": "run", "dir": ".", "params": {}}]}))
    track("start", e, "--mode", "deferred", "--variants", e / "experiment.json")
    info = json.loads((e / "mlflow" / "parent.json").read_text())
    assert set(info) == {"mode", "spool", "start_time", "artifacts", "tracking_uri", "experiment", "run_name", "tags", "params"}
    job(e, "split")
    [spool] = (e / SPOOL).glob("*/*.jsonl")
    assert set(json.loads(spool.read_text().splitlines()[0])) == {"op", "t", "run_name", "rule", "tags"}
    assert "variant" not in json.loads(spool.read_text().splitlines()[0])["tags"]


def test_a_broken_experiment_json_is_one_warning(tmp_path, caplog):
    e = tmp_path / "e"
    e.mkdir()
    (e / "experiment.json").write_text('{"variants": [{"name": "a"}]}')
    track("start", e, "--mode", "deferred", "--variants", e / "experiment.json")
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "MLflow tracking unavailable" in record.getMessage() and "experiment.json" in record.getMessage()


def test_start_parent_takes_the_variants_directly(tmp_path):
    """The library call behind `track start --variants`: no config files needed, the grid's params as given."""
    from tokenforge.tracking.variants import read_variants

    e = experiment(tmp_path)
    info = start_parent(e, mode="live", variants=read_variants(e / "experiment.json"))
    client, _, runs = store(e)
    variant = runs[info["variants"][2]["run_id"]]
    assert variant.data.params == {"memory.method": "random", "seed": "0"} and variant.info.status == "RUNNING"
