"""A results bundle (a tokenforge-results.tar.gz, or the unpacked folder) logged to MLflow as one finished
parent run, for `tokenforge log-bundle` (tokenforge/cli/log_bundle.py): opening and checking the bundle, its
config as params, its headline metrics and learning curve, every file as an artifact; a bundle already logged
(same bundle_sha256 tag) is found by `logged_run`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from tokenforge.errors import TokenforgeError
from tokenforge.report.metrics import headline_metrics
from tokenforge.tracking.base import mlflow_client, store_call

REQUIRED = ("metrics.json", "config.yaml")
SOURCE_TAG = "bundle"
DEFAULT_EXPERIMENT = "tokenforge"
# Files of a package folder that are not part of its archive (package.NOT_ARCHIVED): not logged either.
NOT_LOGGED = (".tokenforge", "stats.json")


@dataclass
class Bundle:
    """A bundle's files, readable in `root` (a temporary folder for an archive), and its identity."""

    source: Path
    root: Path
    files: list[PurePosixPath]
    sha256: str


# --- the bundle -------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[Bundle]:
    """The bundle at `path`: a folder as it is, an archive unpacked member by member into a temporary folder."""
    if path.is_dir():
        root = path
        if not (path / "metrics.json").exists() and (path / "tokenforge-results").is_dir():  # the folder holding it
            root = path / "tokenforge-results"
        files = sorted(
            PurePosixPath(p.relative_to(root).as_posix())
            for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.relative_to(root).as_posix() not in NOT_LOGGED
        )
        sha = _sha256(root / "metrics.json") if (root / "metrics.json").is_file() else ""
        yield Bundle(path, root, files, sha)
        return
    if not path.is_file():
        raise TokenforgeError(f"{path}: bundle not found; expected a tokenforge-results.tar.gz or a bundle folder")
    with tempfile.TemporaryDirectory(prefix="tokenforge-bundle-") as tmp:
        files = unpack(path, Path(tmp))
        yield Bundle(path, Path(tmp), files, _sha256(path))


def _member_path(bundle: Path, member: tarfile.TarInfo) -> PurePosixPath:
    """The member's relative path; absolute paths and '..' are refused (they would land outside the folder)."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise TokenforgeError(f"{bundle}: member {member.name!r} has an unsafe path (absolute or with '..'); refusing it")
    return name


def unpack(bundle: Path, dest: Path) -> list[PurePosixPath]:
    """Write the archive's regular files into `dest`, without their common top folder (tokenforge-results/).

    Every member is checked first; only regular files are written, and only below `dest`.
    """
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            members = tar.getmembers()
            files: dict[PurePosixPath, tarfile.TarInfo] = {}
            for member in members:
                name = _member_path(bundle, member)
                if member.isdir() or not name.parts:
                    continue
                if not member.isfile():
                    raise TokenforgeError(f"{bundle}: member {member.name!r} is not a regular file (a link?); refusing it")
                files[name] = member
            tops = {name.parts[0] for name in files}
            strip = 1 if len(tops) == 1 and all(len(name.parts) > 1 for name in files) else 0
            written = []
            for name, member in files.items():
                rel = PurePosixPath(*name.parts[strip:])
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isfile() members always have data
                    continue
                with source, target.open("wb") as out:
                    for block in iter(lambda: source.read(1 << 20), b""):
                        out.write(block)
                written.append(rel)
    except TokenforgeError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TokenforgeError(f"{bundle}: not a readable .tar.gz bundle ({type(exc).__name__}: {first})") from None
    return sorted(set(written))


def read_bundle(bundle: Bundle) -> tuple[dict, dict]:
    """metrics.json and config.yaml of the bundle, checked: present, parseable, and the shapes package writes."""
    import yaml

    for name in REQUIRED:
        if PurePosixPath(name) not in bundle.files:
            raise TokenforgeError(f"{bundle.source}: member {name} is missing; not a tokenforge results bundle")
    try:
        metrics = json.loads((bundle.root / "metrics.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenforgeError(f"{bundle.source}: member metrics.json is not valid JSON ({exc})") from None
    if not isinstance(metrics, dict) or not _is_number(metrics.get("final_average_accuracy")):
        raise TokenforgeError(f"{bundle.source}: member metrics.json has no numeric 'final_average_accuracy'")
    try:
        config = yaml.safe_load((bundle.root / "config.yaml").read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenforgeError(f"{bundle.source}: member config.yaml is not valid YAML ({first})") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TokenforgeError(f"{bundle.source}: member config.yaml is not a mapping of config keys")
    return metrics, config


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def config_experiment(config: dict) -> str | None:
    """The experiment a bundle's config names (`mlflow.experiment`), or None."""
    mlflow = config.get("mlflow")
    return str(mlflow["experiment"]) if isinstance(mlflow, dict) and mlflow.get("experiment") else None


# --- the store --------------------------------------------------------------------------------


def open_store(uri: str):
    """A client of the store at `uri`; a SQLite store's folder is created, so a backfill may start a new store."""
    from tokenforge.tracking.compare import sqlite_path

    path = sqlite_path(uri)
    if path is not None:  # a new SQLite store is fine (a backfill may start one), its folder must exist
        path.parent.mkdir(parents=True, exist_ok=True)
    return store_call(uri, "open the MLflow store", mlflow_client, uri)


def ensure_experiment(client, uri: str, name: str) -> str:
    """The experiment's id, created if new (for SQLite with the artifacts beside the file, as the pipeline does)."""
    from tokenforge.tracking.compare import sqlite_path

    exp = store_call(uri, "read the MLflow store", client.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise TokenforgeError(f"--experiment {name!r}: is deleted in {uri}; restore it or choose another --experiment")
        return exp.experiment_id
    path = sqlite_path(uri)
    location = (path.resolve().parent / "mlartifacts").as_uri() if path is not None else None
    return store_call(uri, f"create experiment {name!r}", client.create_experiment, name, artifact_location=location)


def logged_run(client, uri: str, experiment_id: str, sha256: str):
    """A FINISHED run of this bundle (same bundle_sha256 tag) in the experiment, or None."""
    runs = store_call(
        uri,
        "search runs",
        client.search_runs,
        [experiment_id],
        f"tags.bundle_sha256 = '{sha256}'",
        order_by=["attributes.start_time DESC"],
    )
    return next((r for r in runs if r.info.status == "FINISHED"), None)


def log_run(client, uri: str, experiment_id: str, bundle: Bundle, metrics: dict, config: dict, run_name: str) -> str:
    """Create the parent run and log config, metrics, curve and files; FINISHED only if every call succeeded."""
    from tokenforge.tracking.runs import MlflowTracker, base_tags, flatten

    tags = {**base_tags(), "source": SOURCE_TAG, "bundle_sha256": bundle.sha256}
    run = store_call(uri, "create a run", client.create_run, experiment_id, run_name=run_name, tags=tags)
    tracker = MlflowTracker(client, run.info.run_id)
    tracker.log_params(flatten(config))
    tracker.log_metrics(headline_metrics(metrics))
    curve = metrics.get("average_accuracy")
    for t, value in enumerate(curve if isinstance(curve, list) else []):
        tracker.log_metrics({"average_accuracy": value}, step=t)
    for rel in bundle.files:
        folder = str(rel.parent) if str(rel.parent) != "." else None
        tracker.log_artifact(bundle.root.joinpath(*rel.parts), folder)
    if not tracker.enabled:  # MlflowTracker warned with the cause; do not leave a run that looks complete
        with contextlib.suppress(Exception):
            client.set_terminated(run.info.run_id, status="FAILED")
        raise TokenforgeError(f"{uri}: logging run {run.info.run_id} failed part-way (see the warning); marked FAILED, rerun")
    store_call(uri, "finish the run", client.set_terminated, run.info.run_id, status="FINISHED")
    return run.info.run_id
