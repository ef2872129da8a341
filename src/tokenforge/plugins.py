"""Registries: one name -> implementation map per kind of extension point, and a researcher's own code by name.

Each kind (a source, a sample selection, a memory method, a token scorer, a replay view, a model option, a task
family) has one `Registry`, declared in the torch-free `__init__` of the package that owns it, next to the
registrations of tokenforge's own implementations:

    # tokenforge/continual/__init__.py
    SCORERS = Registry("scorer", key="memory.scorer", group="tokenforge.scorers", check=callable_check)
    SCORERS.register("rollout", "tokenforge.continual.scorers:rollout")

A registration names its implementation by import path ("module:attribute"), so listing the names (the config
schema's enums, the CLI's choices, `--help`, the docs) imports nothing; the module is imported when the
implementation is first used. A registry behaves like the tuple of its names (`in`, iteration, `len`), which is
what the CLI's `choices=` and older code expect.

A user's own implementation plugs in without editing tokenforge, in two ways:
- by import path in the config or on the command line: `memory.scorer: "mylab.saliency:score"` (the module must be
  importable: installed, or on PYTHONPATH);
- by a Python entry point of an installed package, in the registry's group, the way Snakemake finds its executor
  plugins:

      [project.entry-points."tokenforge.scorers"]
      saliency = "mylab.saliency:score"

  after which `memory.scorer: saliency` works like a built-in name (a built-in name cannot be taken over).

A bad value is one line naming the config key and the value: an unknown name, a missing module, a missing
attribute, or an object of the wrong kind (each registry's `check`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

from tokenforge.errors import TokenforgeError

# module.path:attribute(.attribute): what a user writes to name their own implementation
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# the same, as a JSON-schema pattern (the config schema accepts a registry's names or this)
IMPORT_PATH_PATTERN = IMPORT_PATH.pattern


def is_import_path(value: object) -> bool:
    return isinstance(value, str) and bool(IMPORT_PATH.match(value))


def import_object(path: str, key: str) -> Any:
    """The object at "module:attribute"; a one-line TokenforgeError naming `key` and the path when it is not there."""
    if not is_import_path(path):
        raise TokenforgeError(f"{key}: {path!r} is not an import path like 'package.module:name'")
    module_name, _, attribute = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TokenforgeError(f"{key}: cannot import module {module_name!r} of {path!r} ({exc})") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise TokenforgeError(f"{key}: module {module_name!r} has no attribute {attribute!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


def callable_check(obj: object) -> str | None:
    """The default `check`: any callable (a function or a class)."""
    return None if callable(obj) else f"a {type(obj).__name__}, not a callable"


class Registry:
    """Names -> implementations of one kind; see the module docstring.

    `kind` names it in messages ("scorer"), `key` is the config key it serves ("memory.scorer"), `group` the
    entry-point group of installed plugins ("tokenforge.scorers"), and `check(obj)` returns None for an object
    of the right kind, else a few words on what is wrong with it."""

    def __init__(self, kind: str, *, key: str, group: str, check: Callable[[object], str | None] = callable_check):
        self.kind, self.key, self.group = kind, key, group
        self._check = check
        self._builtins: dict[str, Any] = {}  # name -> "module:attribute" (not yet imported) or the object
        self._loaded: dict[str, Any] = {}

    # --- declaring ---------------------------------------------------------------------------------------------
    def register(self, name: str, target: Any) -> None:
        """Register `target` (its "module:attribute" path, imported on first use, or the object) under `name`."""
        if not re.match(r"^[\w-]+$", name):
            raise TokenforgeError(f"{self.key}: {name!r} cannot be a {self.kind} name (letters, digits, _ and - only)")
        if name in self._builtins and self._builtins[name] != target:
            raise TokenforgeError(f"{self.key}: the {self.kind} {name!r} is already registered")
        self._builtins[name] = target
        self._loaded.pop(name, None)

    # --- listing ------------------------------------------------------------------------------------------------
    def builtin_names(self) -> tuple[str, ...]:
        return tuple(self._builtins)

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        found = {}
        for ep in metadata.entry_points(group=self.group):
            if ep.name not in self._builtins:  # a built-in name cannot be taken over by an installed package
                found.setdefault(ep.name, ep)
        return found

    def plugin_names(self) -> tuple[str, ...]:
        """Names that installed packages announce in this registry's entry-point group."""
        return tuple(sorted(self._entry_points()))

    def names(self) -> tuple[str, ...]:
        """Built-in names in registration order, then installed plugins' names, sorted."""
        return self.builtin_names() + self.plugin_names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, value: object) -> bool:
        """A registered name, an installed plugin's name, or an import path (checked when loaded)."""
        if not isinstance(value, str):
            return False
        return value in self._builtins or is_import_path(value) or value in self._entry_points()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    # --- resolving ----------------------------------------------------------------------------------------------
    def load(self, value: str, key: str | None = None) -> Any:
        """The implementation `value` names: a registered name, an installed plugin's name, or an import path."""
        key = key or self.key
        if value in self._loaded:
            return self._loaded[value]
        if not isinstance(value, str) or not value:
            raise TokenforgeError(f"{key}: {value!r} is not a {self.kind} name")
        if value in self._builtins:
            target = self._builtins[value]
            obj = import_object(target, key) if isinstance(target, str) else target
        elif is_import_path(value):
            obj = import_object(value, key)
        else:
            entry = self._entry_points().get(value)
            if entry is None:
                raise TokenforgeError(
                    f"{key}: unknown {self.kind} {value!r}; expected one of {', '.join(self.names())} "
                    "or an import path like 'package.module:name'"
                )
            try:
                obj = entry.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin package: say which, in one line
                raise TokenforgeError(f"{key}: the {self.kind} plugin {value!r} ({entry.value}) failed to load: {exc}") from None
        problem = self._check(obj)
        if problem:
            raise TokenforgeError(f"{key}: {value!r} is not a {self.kind}: it is {problem}")
        self._loaded[value] = obj
        return obj

    def load_for(self, value: str, family: str, default_families: tuple[str, ...], key: str | None = None) -> Any:
        """`load(value)` for a task family: an implementation says which families it serves by its `families`
        attribute (`default_families` when it has none); one that does not serve `family` is a one-line error
        listing the built-ins that do."""
        obj = self.load(value, key)
        if family in getattr(obj, "families", default_families):
            return obj
        offered = [n for n in self.builtin_names() if family in getattr(self.load(n), "families", default_families)]
        raise TokenforgeError(f"{key or self.key}: {value!r} is not offered for {family}; use one of {', '.join(offered)}")

    def schema(self) -> dict:
        """The JSON-schema fragment for a config value of this kind: a name of this registry or an import path."""
        return {"anyOf": [{"enum": list(self.names())}, {"type": "string", "pattern": IMPORT_PATH_PATTERN}]}
