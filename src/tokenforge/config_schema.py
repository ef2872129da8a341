"""The config schema with its pluggable keys' choices filled in from the registries (tokenforge/plugins.py).

workflow/schemas/config.schema.yaml does not list the names a registry-backed key accepts; the key says which
registry it takes them from:

    scorer: {x-registry: "tokenforge.continual:SCORERS", default: random}

`expanded(path)` returns the schema with each such node replaced by "one of the registry's names (built-ins and
installed plugins) or an import path like 'package.module:name'", keeping its default and description; a source
spec (`x-registry-spec`) is a name, `name:PATH`, an import path with an optional `:PATH`, or parts joined by '+'.
`write_expanded(schema)` writes it to a temporary file for Snakemake's `validate`; `check_choices` gives the
one-line errors first. Nothing here imports torch.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml

from tokenforge.plugins import IMPORT_PATH_PATTERN, import_object

_KEEP = ("default", "description")


def _registry(path: str):
    return import_object(path, "x-registry")


def _spec_pattern(registry) -> str:
    """A source spec: NAME[:PATH] of the registry, seit:PATH (a token release), module:attr[:PATH], '+'-joined."""
    names = "|".join(re.escape(n) for n in registry.names())
    path_import = IMPORT_PATH_PATTERN.strip("^$")
    part = f"(({names})(:[^+]+)?|seit:.+|{path_import}(:[^+]+)?)"
    return f"^{part}(\\+{part})*$"


def _expand(node):
    if isinstance(node, list):
        return [_expand(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "x-registry" in node:
        out = _registry(node["x-registry"]).schema()
    elif "x-registry-spec" in node:
        out = {"type": "string", "pattern": _spec_pattern(_registry(node["x-registry-spec"]))}
    else:
        return {k: _expand(v) for k, v in node.items()}
    out.update({k: node[k] for k in _KEEP if k in node})
    return out


def read_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def expanded(path: str | Path) -> dict:
    """The schema at `path` with every `x-registry` / `x-registry-spec` node filled from its registry."""
    return _expand(read_schema(path))


def _registry_keys(node, prefix: str = ""):
    """(dotted key, registry path, is a source spec) of every `x-registry`(-spec) node under the schema `node`."""
    if not isinstance(node, dict):
        return
    if "x-registry" in node:
        yield prefix, node["x-registry"], False
    if "x-registry-spec" in node:
        yield prefix, node["x-registry-spec"], True
    for name, child in (node.get("properties") or {}).items():
        yield from _registry_keys(child, f"{prefix}.{name}" if prefix else name)


def _value(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _check_spec(key: str, spec: str, registry) -> None:
    """Each '+' part of a source spec, parsed as the shard stage parses it (data.sources.parse_spec): seit:PATH, a
    registered name with its PATH, or a reader by import path, which is imported now so that a missing module or
    attribute fails before any job runs."""
    from tokenforge.data.sources import parse_spec
    from tokenforge.errors import TokenforgeError

    for part in spec.split("+"):
        if part.startswith("seit:"):  # a token release: the seit stage reads it, not a reader
            continue
        try:
            name, _ = parse_spec(part)
        except TokenforgeError as exc:
            raise TokenforgeError(f"config key {key}: {exc}") from None
        if name not in registry.builtin_names() and name not in registry.plugin_names():
            registry.load(name, f"config key {key}")


def check_choices(config: dict, schema: dict) -> None:
    """A one-line TokenforgeError for a registry-backed key whose value is not a name of its registry, or an import
    path that does not load as one ("config key memory.scorer: unknown scorer 'x'; expected one of ..."): clearer
    than the schema's anyOf message, and before any job runs. Built-in names are not imported here."""
    from tokenforge.errors import TokenforgeError

    for key, registry_path, spec in _registry_keys(schema):
        value, registry = _value(config, key), _registry(registry_path)
        if not isinstance(value, str):
            continue
        if spec:
            _check_spec(key, value, registry)
        elif value not in registry:
            raise TokenforgeError(
                f"config key {key}: unknown {registry.kind} {value!r}; expected one of {', '.join(registry.names())} "
                "or an import path like 'package.module:name'"
            )
        elif value not in registry.builtin_names() and value not in registry.plugin_names():
            registry.load(value, f"config key {key}")  # an import path: its module and attribute must be there


def write_expanded(schema: dict) -> Path:
    """`schema` (as read) expanded and written to a temporary YAML file (the caller removes it), for Snakemake's
    `validate`."""
    with tempfile.NamedTemporaryFile("w", suffix=".schema.yaml", prefix="tokenforge-", delete=False) as out:
        yaml.safe_dump(_expand(schema), out, sort_keys=False)
    return Path(out.name)
