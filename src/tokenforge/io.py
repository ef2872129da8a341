"""Atomic outputs: a stage writes into a temporary sibling and renames it into place on success,
so a failed or killed stage never leaves a half-written file or directory behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from tokenforge.errors import TokenforgeError

# Written into every output directory we create, so we only ever replace our own directories.
MARKER = ".tokenforge"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to `path`; on success it becomes `path`.

    An existing `path` is replaced only if it is empty or was made by tokenforge (has the marker
    file); anything else is a user's directory and is never touched.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not (path / MARKER).exists():
        raise TokenforgeError(f"{path}: exists and was not made by tokenforge; choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        (tmp / MARKER).write_text("made by tokenforge\n")
        # mkdtemp makes 0700 and some writers (safetensors) 0600: give outputs the usual permissions.
        mask = _umask()
        os.chmod(tmp, 0o777 & ~mask)
        for item in tmp.rglob("*"):
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file is a one-line TokenforgeError."""
    path = Path(path)
    if not path.is_file():
        raise TokenforgeError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenforgeError(f"{path}: not valid JSON ({exc})") from None


def read_parquet(path: str | os.PathLike, columns: tuple[str, ...], what: str):
    """A Parquet table with the given columns; a missing, unreadable or incomplete file is a one-line error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = require_file(path, what)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise TokenforgeError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise TokenforgeError(f"{path}: missing column(s) {', '.join(missing)} in this {what}")
    return table


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise TokenforgeError(f"{path}: {what} not found")
    return path


def require_dir(path: str | os.PathLike, what: str = "directory") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise TokenforgeError(f"{path}: {what} not found")
    return path
