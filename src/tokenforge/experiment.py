"""Experiments: a base config plus a grid over config keys, expanded into variants that share their upstream stages.

An experiment is the config's `experiment:` section (config/experiments/*.yaml):

    experiment:
      grid:                        # axes; every combination is a variant
        memory:                    # a section key takes mappings: settings that go together
          - {method: none}
          - {method: coreset}
          - {method: coretokenset, scorer: random}
        memory.budget: ["2%", "5%"]
        seed: [0, 1, 2]
      exclude:                     # drop every combination that matches all of an entry's settings
        - {memory.method: none, memory.budget: "5%"}
      include:                     # extra variants, each crossed with the grid axes it does not set
        - {memory.method: joint}
      name: "{memory.method}-{memory.budget}-s{seed}"   # optional; default: the axes' values joined by "_"

A config without the section is a grid of one, laid out as before: every stage in <results>/<run>/. With several
variants, <results>/<run>/ holds experiment.json and the comparison, runs/<variant>/ the per-variant stages
(train, evaluate, package) and shared/<stage>-<hash>/ each shared stage, keyed by the settings it reads (its own and
its upstream's), so a stage runs once for all variants whose inputs to it are equal: shard per data settings and
`data_seed`, tokenizer and tokens per those plus the tokenizer's, split per seed, pretrain per its own keys.

Everything here is plain Python on dicts (no Snakemake, no torch): common.smk calls `expand_experiment` and
raises its one-line errors before any job runs.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from tokenforge.errors import TokenforgeError

# Settings of the whole invocation: one value for every variant.
EXPERIMENT_LEVEL = ("run", "results", "threads", "warm_start", "mlflow", "family", "shard.parts", "experiment",
                    "train.gpus", "train.nodes", "train.processes", "train.launcher")

# Each shared stage group: the config keys its outputs depend on ("@group": everything that group depends on).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("shard", "@data_seed"),
    "tokens": ("@data", "tokenizer", "tokenize", "synonyms"),
    "tokenadapt": ("@tokens", "tokenadapt", "seed"),
    "split": ("@tokens", "split", "seed", "family", "multimodal"),
    "pretrain": ("@split", "pretrain", "train.input", "train.embed_dim", "train.depth", "train.num_heads",
                 "train.mlp_ratio"),
}
# Settings inside those that a stage does not read: pretrain.init says whether task 0 starts from the pretraining
# (train reads it), so a fill-only start shares the pretraining of the same settings; the split reads only the
# multimodal settings that group and tokenize the text.
NOT_READ = {"pretrain": ("init",), "multimodal": ("blind", "blind_control", "generate_tokens", "text_max_len", "pretrained")}
GROUPS = (*STAGE_KEYS, "run")

_MISSING = object()


@dataclass
class Variant:
    """One run of the experiment: its name, grid settings (dotted keys), full config and the roots of its stages
    (paths relative to the results folder; `roots["run"]` is its own)."""

    name: str
    params: dict[str, Any]
    config: dict
    roots: dict[str, str] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """Its name without the seed: the variants of one group differ only in seed."""
        return label({k: v for k, v in self.params.items() if k != "seed"}) or "base"


def get(config: dict, key: str, default: Any = _MISSING) -> Any:
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def put(config: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = copy.deepcopy(value)


def flat(key: str, value: Any) -> dict[str, Any]:
    """A setting as dotted keys: ("memory", {"method": "none"}) -> {"memory.method": "none"}."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flat(f"{key}.{k}", v))
        return out
    return {key: value}


def check_key(schema: dict, key: str, where: str) -> None:
    """A dotted key the config schema knows (a free-form mapping such as train.model_options takes any below it)."""
    node = schema
    for i, part in enumerate(key.split(".")):
        props = node.get("properties") or {}
        if part in props:
            node = props[part]
            continue
        if node.get("additionalProperties") not in (None, False) and i > 0:
            return
        raise TokenforgeError(f"{where} key {key}: not a config key")


def _value_label(key: str, value: Any) -> str:
    if key == "seed":
        return f"s{value}"
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool):
        return f"{key.rsplit('.', 1)[-1]}-{str(value).lower()}"
    return f"{key.rsplit('.', 1)[-1]}{json.dumps(value, separators=(',', ':'))}"


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._%+=-]+", "-", text).strip("-") or "base"


def label(params: dict[str, Any]) -> str:
    """The default name of a variant: its settings' values in order, joined by '_'."""
    return safe("_".join(_value_label(k, v) for k, v in params.items()))


def _template_name(template: str, params: dict, config: dict) -> str:
    def value(m: re.Match) -> str:
        key = m.group(1)
        found = params.get(key, get(config, key, _MISSING))
        if found is _MISSING:
            raise TokenforgeError(f"experiment.name: {{{key}}} is not a config key")
        return str(found)

    return safe(re.sub(r"\{([^{}]+)\}", value, template))


def _axes(spec: dict, schema: dict) -> dict[str, list[dict]]:
    """grid: axis key -> list of settings (dotted keys) for each of its values; every key checked."""
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise TokenforgeError("experiment.grid: expected a mapping of config keys to lists of values")
    axes = {}
    for key, values in grid.items():
        if not isinstance(values, list):
            raise TokenforgeError(f"experiment.grid key {key}: expected a list of values, got {values!r}")
        if not values:
            raise TokenforgeError(f"experiment.grid key {key}: no values (an empty axis makes an empty grid)")
        axes[key] = [flat(key, v) for v in values]
        for settings in axes[key]:
            for k in settings:
                check_key(schema, k, "experiment.grid")
    return axes


def _entries(spec: dict, which: str, schema: dict) -> list[dict]:
    entries = spec.get(which) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e for e in entries):
        raise TokenforgeError(f"experiment.{which}: expected a list of mappings of config keys to values")
    out = []
    for entry in entries:
        settings = {}
        for k, v in entry.items():
            settings.update(flat(k, v))
        for k in settings:
            check_key(schema, k, f"experiment.{which}")
        out.append(settings)
    return out


def _sets(settings: dict, axis: str) -> bool:
    return any(k == axis or k.startswith(axis + ".") for k in settings)


def combinations(spec: dict, schema: dict) -> list[dict[str, Any]]:
    """Every variant's settings (dotted keys, in axis order): the grid's product, minus exclude, plus include."""
    axes = _axes(spec, schema)
    exclude = _entries(spec, "exclude", schema)
    include = _entries(spec, "include", schema)
    out = [_merge(choice) for choice in itertools.product(*axes.values())] if axes else []
    out = [c for c in out if not any(all(c.get(k, _MISSING) == v for k, v in e.items()) for e in exclude)]
    for entry in include:
        # the entry's settings stand in for the axes they set, in the grid's order
        options = [[{k: v for k, v in entry.items() if k == axis or k.startswith(axis + ".")}] if _sets(entry, axis)
                   else values for axis, values in axes.items()]
        out += [{**_merge(choice), **entry} for choice in itertools.product(*options)]
    return out


def _merge(settings: tuple[dict, ...]) -> dict:
    out: dict = {}
    for s in settings:
        out.update(s)
    return out


def stage_key(config: dict, group: str) -> str:
    """A digest of every setting the group's outputs depend on (upstream groups' included)."""
    values = {}
    for key in STAGE_KEYS[group]:
        if key == "@data_seed":
            values["data_seed"] = data_seed(config)
        elif key.startswith("@"):
            values[key] = stage_key(config, key[1:])
        else:
            values[key] = get(config, key, None)
    for section, keys in NOT_READ.items():
        if isinstance(values.get(section), dict):
            values[section] = {k: v for k, v in values[section].items() if k not in keys}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def data_seed(config: dict) -> int:
    """The seed of shard and tokenizer: data_seed, else seed."""
    value = config.get("data_seed")
    return config["seed"] if value is None else value


def _check_level(variants: list[Variant]) -> None:
    first = variants[0].config
    for v in variants[1:]:
        for key in EXPERIMENT_LEVEL:
            if get(v.config, key, None) != get(first, key, None):
                raise TokenforgeError(f"experiment key {key}: the same for every variant (variant {v.name} changes it)")
        seit = str(v.config["shard"]["source"]).startswith("seit:")
        if seit != str(first["shard"]["source"]).startswith("seit:"):
            raise TokenforgeError(f"experiment key shard.source: seit: and image sources cannot mix (variant {v.name})")


def expand_experiment(config: dict, schema: dict, validate: Callable[[dict, str], dict] | None = None) -> list[Variant]:
    """The experiment's variants with their configs and stage roots; a config without `experiment:` is one variant.

    `validate(config, name)` checks a variant's config (and may fill defaults); errors are one line naming the key."""
    spec = config.get("experiment") or {}
    run = config["run"]
    combos = combinations(spec, schema) if spec else []
    if spec and not combos:
        raise TokenforgeError("experiment: the grid is empty (no axes, or every combination excluded)")
    if len(combos) <= 1:
        base = copy.deepcopy(config)
        params = combos[0] if combos else {}
        for k, v in params.items():
            put(base, k, v)
        base = validate(base, run) if validate else base
        return [Variant(name=run, params=params, config=base, roots={g: run for g in GROUPS})]
    variants = []
    for params in combos:
        cfg = copy.deepcopy(config)
        for k, v in params.items():
            put(cfg, k, v)
        name = _template_name(spec["name"], params, cfg) if spec.get("name") else label(params)
        variants.append(Variant(name=name, params=params, config=cfg))
    _unique(variants)
    for v in variants:
        v.config = validate(v.config, v.name) if validate else v.config
        v.roots = {g: f"{run}/shared/{g}-{stage_key(v.config, g)}" for g in STAGE_KEYS}
        v.roots["run"] = f"{run}/runs/{v.name}"
    _check_level(variants)
    return variants


def _unique(variants: list[Variant]) -> None:
    seen: dict[str, dict] = {}
    for v in variants:
        if v.name in seen:
            raise TokenforgeError(
                f"experiment.name: two variants named {v.name} ({seen[v.name]} and {v.params}); name them apart"
            )
        seen[v.name] = v.params


def describe(variants: list[Variant], run: str) -> dict:
    """experiment.json: what the comparison and MLflow read (variant folders relative to <results>/<run>)."""
    axes: list[str] = []
    for v in variants:
        axes += [k for k in v.params if k not in axes]
    return {
        "experiment": run,
        "axes": axes,
        "variants": [
            {
                "name": v.name,
                "dir": v.roots["run"].removeprefix(f"{run}/") if len(variants) > 1 else ".",
                "params": v.params,
                "group": v.group,
                "seed": v.config["seed"],
                "family": v.config.get("family", "classification"),
                "stages": {g: v.roots[g] for g in STAGE_KEYS},
            }
            for v in variants
        ],
    }
