# Shared helpers used by every stage file: config validation, the results prefix, the command that runs the CLI,
# CLI arguments, MLflow flags.
import json
from pathlib import Path
import re
import shlex
import sys

import snakemake
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate
from tokenforge.errors import TokenforgeError

# The schema's pluggable keys (x-registry) take their choices from tokenforge's registries, installed plugins included.
from tokenforge.config_schema import check_choices, read_schema, write_expanded
from tokenforge.experiment import GROUPS, data_seed, describe, expand_experiment
from tokenforge.families import FAMILIES

_schema_read = read_schema(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
_schema = write_expanded(_schema_read)


def _validated(cfg, name):
    """A variant's config checked by the schema (defaults filled in); errors name the key (and the variant)."""
    where = "" if name == config["run"] else f"experiment variant {name}: "
    # YAML reads a bare `off` as false: train.compile's "off" either way
    if (cfg.get("train") or {}).get("compile", "off") is False:
        cfg["train"]["compile"] = "off"
    try:
        check_choices(cfg, _schema_read)
    except TokenforgeError as exc:
        raise TokenforgeError(f"{where}{exc}") from None
    try:
        validate(cfg, schema=str(_schema))
    except WorkflowError as exc:
        # One line naming the bad key: "config key train.epochs: 'abc' is not of type 'integer'".
        text = str(exc)
        found = re.search(r"ValidationError: (.*?)$", text, re.M)
        at = re.search(r"On instance((?:\[[^\]]*\])*)", text)
        key = ".".join(re.findall(r"\['?([^'\]]*)'?\]", at.group(1))) if at else ""
        raise TokenforgeError(
            f"{where}config key {key or '(top level)'}: {found.group(1) if found else text.splitlines()[0]}"
        ) from None
    return cfg


# The experiment (tokenforge/experiment.py): the config's grid expanded into variants, each with its config and the
# folders of its stages; a config without `experiment:` is one variant in <results>/<run>/ as always.
try:
    VARIANTS = expand_experiment(config, _schema_read, _validated)
except TokenforgeError as exc:
    raise WorkflowError(str(exc)) from None
finally:
    _schema.unlink(missing_ok=True)
if len(VARIANTS) == 1:
    config.update(VARIANTS[0].config)  # a single run's config with its defaults, as before
GRID = len(VARIANTS) > 1
BASE = VARIANTS[0].config  # the settings every variant shares (tokenforge.experiment.EXPERIMENT_LEVEL)
RESULTS = BASE["results"]
E = f"{RESULTS}/{BASE['run']}"  # the experiment's folder: experiment.json and the comparison (a single run's own)
# Each stage group's wildcard; its values are the groups' folders under RESULTS (a single run: all <run>)
WC = {"data": "data", "tokens": "tok", "tokenadapt": "adapt", "split": "sp", "pretrain": "pre", "run": "run"}
OWNER = {g: {} for g in GROUPS}  # group -> folder -> a variant that uses it (all of them agree on its settings)
for _v in VARIANTS:
    for _g in GROUPS:
        OWNER[_g].setdefault(_v.roots[_g], _v)
WILDCARD_CONSTRAINTS = {WC[g]: "|".join(re.escape(r) for r in OWNER[g]) for g in GROUPS}


def V(group, wildcards):
    """The variant behind a job of this stage group (any of those sharing it)."""
    return OWNER[group][getattr(wildcards, WC[group])]


def path(group, rel):
    """An output pattern of the group's stage: <results>/{<group wildcard>}/rel."""
    return f"{RESULTS}/{{{WC[group]}}}/{rel}"


def at(group, target, rel):
    """An input function: rel in the `target` group's folder of this job's variant."""
    return lambda wildcards: f"{RESULTS}/{V(group, wildcards).roots[target]}/{rel}"


def cfg(group, fn):
    """A params function: fn(the variant's config)."""
    return lambda wildcards: fn(V(group, wildcards).config)


# The CLI is the one of the Python that runs Snakemake (`python -m tokenforge`), not whatever `tokenforge` is on
# PATH: `.venv/bin/snakemake` works without an activated venv. Under SLURM each job runs `<this python> -m
# snakemake` on its node (a shared file system), so the path holds there too. Under `--sdm conda` a job runs in
# envs/tokenforge.yaml, whose own `python` has tokenforge. Rules take it as params.tokenforge (`--lint` wants no
# globals in shell commands): a job made by another interpreter counts as changed params and is rerun.
PYTHON = shlex.quote(sys.executable)  # the onstart/onsuccess/onerror hooks run here, never in a conda env
_deployment = getattr(workflow, "deployment_settings", None)
JOB_PYTHON = "python" if _deployment and DeploymentMethod.CONDA in _deployment.deployment_method else PYTHON
TOKENFORGE = f"{JOB_PYTHON} -m tokenforge"


# Settings of the whole invocation (the same in every variant: tokenforge.experiment.EXPERIMENT_LEVEL).
# A `seit:DIR` source is a SeiT token release: it is imported into tokens/ and replaces the
# shard, tokenizer and tokenize stages (there are no images, so no pixel baseline either).
SEIT = BASE["shard"]["source"].startswith("seit:")
# shard.parts > 1: shard and tokenize scatter over this many jobs each (part-000 .. part-<P-1>), gathered after
PARTS = [f"{k:03d}" for k in range(BASE["shard"].get("parts", 1))]
THREADS = BASE["threads"]
# train.* keys that choose how a training job is launched (resources), not `tokenforge train` flags
LAUNCH_KEYS = ("gpus", "nodes", "processes", "launcher")
TRAIN_GPUS = BASE["train"]["gpus"]
TRAIN_NODES = BASE["train"]["nodes"]
# A training job's resources (train, and the blind control's 65_control.smk): several nodes take one SLURM task per
# node, and the job's shell calls srun itself (the plugin does not wrap it)
TRAIN_RESOURCES = dict(mem_mb=8000, runtime=240, gpu=TRAIN_GPUS, nodes=TRAIN_NODES,
                       **({"tasks": TRAIN_NODES, "mpi": "srun"} if TRAIN_NODES > 1 else {}))  # fmt: skip
# The task family (families/): classification trains the ViT on class labels; vqa and captioning train BLIP on the
# text that a text source (scenes, vqa2:, clevr:, coco-captions:) carries beside its images. Same stages, same files,
# the same launch (train.processes, gpus, nodes); the pretrain stage starts BLIP's vision encoder (families/text_start.py).
FAMILY = BASE.get("family", "classification")
# --family for a family other than the CLI's default (classification's commands stay as they were)
FAMILY_FLAG = "" if FAMILY == "classification" else f"--family {shlex.quote(FAMILY)}"
MULTIMODAL = bool(getattr(FAMILIES.load(FAMILY), "reads_text", False))  # text beside the images: vqa, captioning
# Where each stage's outputs are, relative to a group's folder: a seit: source's tokens/ holds codebook, classes, synonyms
TOKENIZER_REL = "tokens" if SEIT else "tokenizer"  # the folder with codebook.safetensors + config.json
CLASSES_AT = ("tokens", "tokens/classes.json") if SEIT else ("data", "shard/classes.json")
SYNONYMS_AT = ("tokens", "tokens/synonyms.json") if SEIT else ("tokens", "synonyms/synonyms.json")


def tasks(c):
    return list(range(c["split"]["tasks"]))


def shard_stats(group):
    """The shards' stats, an input of the rules that read images (pixels, tokenadapt); none for a seit: source."""
    return [] if SEIT else at(group, "data", "shard/stats.json")


def shards_flag(group):
    return "" if SEIT else lambda w: f"--shards {RESULTS}/{V(group, w).roots['data']}/shard"


def _launch(resources):
    """The launch settings of a training job: its resources, and the config's processes and launcher."""
    return dict(
        gpu=int(resources.get("gpu", 0) or 0),
        nodes=int(resources.get("nodes", 1) or 1),
        processes=BASE["train"]["processes"],
        launcher=BASE["train"]["launcher"],
        srun=bool(resources.get("mpi")),
    )


def train_processes(resources):
    """Training processes per node of a job with these resources: one per GPU, else train.processes."""
    from tokenforge.engine.launch import processes_per_node

    settings = _launch(resources)
    return processes_per_node(settings["gpu"], settings["nodes"], settings["processes"])


def train_launch(resources):
    """What starts `tokenforge` in a training job (tokenforge.engine.launch.train_command, from the job's resources):
    with python=, tokenforge, torchrun and the deepspeed launcher are modules of the job's Python (no PATH needed)."""
    from tokenforge.engine.launch import train_command

    return train_command(**_launch(resources), python=JOB_PYTHON)


# The configured launch is checked before any job runs (a profile's resources are checked when a job starts).
try:
    train_launch({"gpu": TRAIN_GPUS, "nodes": TRAIN_NODES})
except TokenforgeError as exc:
    raise WorkflowError(f"config key {exc}") from None


def dirname(key):
    """A params function: the directory of the named input or output file (for --out DIR flags)."""
    kind, _, name = key.partition(".")
    return lambda wildcards, input, output: os.path.dirname((input if kind == "input" else output)[name])


def cli_args(section, prefix=""):
    """A config section as CLI flags: {'batch_size': 8} -> '--batch-size 8'; None is left out."""
    out = []
    for key, value in section.items():
        flag = f"--{prefix}{key.replace('_', '-')}"
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{prefix}{key.replace('_', '-')}")
        elif isinstance(value, list):
            out.append(f"{flag} {' '.join(shlex.quote(str(v)) for v in value)}")
        else:
            out.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(out)


def section_args(group, section, prefix="", drop=()):
    """A params function: the variant's config section as CLI flags, without the `drop` keys."""
    return cfg(group, lambda c: cli_args({k: v for k, v in (c.get(section) or {}).items() if k not in drop}, prefix))


def model_option_flags(c):
    """train.model_options as `--model-option NAME=JSON` flags (models/options/extra.py), in the config's order."""
    options = c["train"].get("model_options") or {}
    return " ".join(shlex.quote(f"--model-option={name}={json.dumps(settings, sort_keys=True)}") for name, settings in options.items())


def track(group, rule_tags=""):
    """The MLflow flags every job passes: a variant's own jobs attach to its run, shared ones to the experiment's
    parent; the run (experiment) name, and in a grid the variant's, as tags."""

    def flags(wildcards):
        v = V(group, wildcards)
        own = group == "run" and GRID
        where = f"{RESULTS}/{v.roots['run']}" if own else E
        tags = rule_tags.format(**dict(wildcards.items())) if rule_tags else ""
        variant = f" --tag variant={shlex.quote(v.name)}" if own else ""
        return f"--track {where} --tag run={BASE['run']}{variant} --tag snakemake_version={snakemake.__version__} {tags}"

    return flags


def previous_task(wildcards):
    """Task t's training starts from task t-1's model and memory: this draws the chain in the DAG."""
    t = int(wildcards.task)
    if t == 0:
        return []
    return expand(f"{RESULTS}/{wildcards.run}/train/task-{{t}}/{{f}}", t=t - 1, f=["model.safetensors", "memory.arrows.zst"])


def previous_flag(wildcards):
    t = int(wildcards.task)
    return f"--previous {RESULTS}/{wildcards.run}/train/task-{t - 1}" if t > 0 else ""


def tracking_flags():
    uri = BASE["mlflow"].get("tracking_uri")
    mode = BASE["mlflow"].get("mode", "auto")  # tokenforge track --help: live, deferred, auto
    return f"--experiment {shlex.quote(BASE['mlflow']['experiment'])} --mode {mode}" + (
        f" --tracking-uri {shlex.quote(uri)}" if uri else ""
    )


def pretrain_mode(c):
    return (c.get("pretrain") or {}).get("mode", "none")


def fill_mtm(c):
    return c["memory"].get("view") == "fill" and c["memory"].get("fill") == "mtm"


def tokenadapt_on(c):
    return bool((c.get("tokenadapt") or {}).get("enabled", False))


def check_variant(c):
    """Settings that cannot work together, caught before any job runs (one line naming the key)."""
    pretrain = c.get("pretrain") or {}
    mode = pretrain_mode(c)
    if SEIT and c["train"]["input"] == "pixels":
        return "config key train.input: 'pixels' needs image shards; a seit: source holds tokens only"
    if fill_mtm(c) and mode != "mtm":
        return "config key memory.fill: mtm needs a masked-token model: set pretrain.mode to mtm"
    if mode != "none" and SEIT and pretrain.get("data", "heldout") not in ("heldout", "tasks"):
        return "config key pretrain.data: a seit: source has no tokenizer to encode another source with"
    if (c["train"].get("prompts") or {}).get("tokens", 0) and (mode == "none" or not pretrain.get("init", True)):
        return "config key train.prompts: prompt tuning needs a backbone for task 0: set pretrain.mode (and pretrain.init)"
    if tokenadapt_on(c) and SEIT:
        return "config key tokenadapt.enabled: a seit: source has no images or tokenizer model to train it on"
    if c.get("augment", {}).get("tokenadapt_p", 0) > 0 and not tokenadapt_on(c):
        return "config key augment.tokenadapt_p: > 0 needs the adapter: set tokenadapt.enabled to true"
    if MULTIMODAL:
        return check_multimodal(c)
    return None


def check_multimodal(c):
    pretrain, mm = c.get("pretrain") or {}, c.get("multimodal") or {}
    if SEIT:
        return f"config key family: {FAMILY} needs text beside the images; a seit: source has tokens only"
    if tokenadapt_on(c):
        return f"config key family: {FAMILY} has no tokenadapt stage (its augmentations are the ViT's); set tokenadapt.enabled false"
    if pretrain_mode(c) in ("supervised", "mtm") and pretrain.get("data", "heldout") == "heldout":
        return (f"config key pretrain.data: heldout needs classes the split leaves out; a {FAMILY} split has none "
                "(use tasks, the sequence's own images, for mtm, or a source)")
    if mm.get("blind") and c["memory"]["method"] in ("coretokens", "coretokenset"):
        return "config key multimodal.blind: a blind model has no image tokens to keep; use memory.method none, coreset or joint"
    if mm.get("blind") and mm.get("blind_control"):
        return "config key multimodal.blind_control: the run's model is blind itself; set one of blind, blind_control"
    if mm.get("pretrained") and pretrain_mode(c) != "none" and pretrain.get("init", True):
        return "config key multimodal.pretrained: task 0 starts from it or from the pretrain stage, not both (pretrain.init false)"
    return None


for _v in VARIANTS:
    _problem = check_variant(_v.config)
    if _problem:
        raise WorkflowError(f"experiment variant {_v.name}: {_problem}" if GRID else _problem)


def pretrain_inputs(wildcards):
    """What a training job reads from the pretrain stage: task 0 its start (pretrain.init), every task the MTM fill."""
    v = V("run", wildcards)
    c = v.config
    init = pretrain_mode(c) != "none" and c["pretrain"].get("init", True) and int(wildcards.task) == 0
    return [f"{RESULTS}/{v.roots['pretrain']}/pretrain/model.safetensors"] if init or fill_mtm(c) else []


def pretrain_flags(wildcards):
    v = V("run", wildcards)
    c, folder = v.config, f"{RESULTS}/{v.roots['pretrain']}/pretrain"
    flags = []
    if pretrain_mode(c) != "none" and c["pretrain"].get("init", True) and int(wildcards.task) == 0:
        flags.append(f"--init {folder}")
    if fill_mtm(c):
        flags.append(f"--fill-model {folder}")
    return " ".join(flags)


def tokenadapt_inputs(wildcards):
    v = V("run", wildcards)
    return [f"{RESULTS}/{v.roots['tokenadapt']}/tokenadapt/adapter.safetensors"] if tokenadapt_on(v.config) else []


def tokenadapt_flag(wildcards):
    v = V("run", wildcards)
    return f"--adapter {RESULTS}/{v.roots['tokenadapt']}/tokenadapt" if tokenadapt_on(v.config) else ""


def split_flags(group):
    """`tokenforge split` flags beyond the split: section: the family's groups and text tokenizer."""

    def flags(wildcards):
        v = V(group, wildcards)
        if not MULTIMODAL:
            return f"--classes {RESULTS}/{v.roots[CLASSES_AT[0]]}/{CLASSES_AT[1]} {FAMILY_FLAG}".strip()
        mm = v.config.get("multimodal") or {}
        out = f"{FAMILY_FLAG} --tokens {RESULTS}/{v.roots['tokens']}/tokens/train.parquet"
        out += f" --caption-prompt {shlex.quote(mm.get('caption_prompt', 'a picture of'))}"
        if mm.get("split_by"):
            out += f" --by {mm['split_by']}"
        if mm.get("text_tokenizer"):
            out += f" --text-tokenizer {shlex.quote(mm['text_tokenizer'])}"
        return out

    return flags


def family_train_flags(c):
    """`tokenforge train` flags of the family: none for classification."""
    if not MULTIMODAL:
        return FAMILY_FLAG
    mm = c.get("multimodal") or {}
    flags = f"{FAMILY_FLAG} --text-max-len {mm.get('text_max_len', 24)}" + (" --blind" if mm.get("blind") else "")
    return flags + (f" --pretrained {shlex.quote(mm['pretrained'])}" if mm.get("pretrained") else "")


def family_evaluate_flags(c):
    if not MULTIMODAL:
        return FAMILY_FLAG
    mm = c.get("multimodal") or {}
    return FAMILY_FLAG + (f" --generate-tokens {mm['generate_tokens']}" if mm.get("generate_tokens") else "")


def write_resolved():
    """Each variant's resolved config in its folder (package logs it), the experiment's base in E, and
    experiment.json (what the comparison and MLflow read)."""
    os.makedirs(E, exist_ok=True)
    for v in VARIANTS:
        os.makedirs(f"{RESULTS}/{v.roots['run']}", exist_ok=True)
        with open(f"{RESULTS}/{v.roots['run']}/config.resolved.yaml", "w") as fh:
            yaml.safe_dump(v.config, fh, sort_keys=False)
    if GRID:
        with open(f"{E}/config.resolved.yaml", "w") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)
        with open(f"{E}/experiment.json", "w") as fh:
            json.dump(describe(VARIANTS, BASE["run"]), fh, indent=2)
            fh.write("\n")
