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

# YAML reads a bare `off` as false: train.compile's "off" either way
if (config.get("train") or {}).get("compile", "off") is False:
    config["train"]["compile"] = "off"

# The schema's pluggable keys (x-registry) take their choices from tokenforge's registries, installed plugins included.
from tokenforge.config_schema import check_choices, read_schema, write_expanded
from tokenforge.families import FAMILIES

_schema_read = read_schema(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
try:
    check_choices(config, _schema_read)
except TokenforgeError as exc:
    raise WorkflowError(str(exc)) from None
_schema = write_expanded(_schema_read)
try:
    validate(config, schema=str(_schema))
except WorkflowError as exc:
    # One line naming the bad key: "config key train.epochs: 'abc' is not of type 'integer'".
    text = str(exc)
    found = re.search(r"ValidationError: (.*?)$", text, re.M)
    where = re.search(r"On instance((?:\[[^\]]*\])*)", text)
    key = ".".join(re.findall(r"\['?([^'\]]*)'?\]", where.group(1))) if where else ""
    raise WorkflowError(
        f"config key {key or '(top level)'}: {found.group(1) if found else text.splitlines()[0]}"
    ) from None
finally:
    _schema.unlink(missing_ok=True)

# The CLI is the one of the Python that runs Snakemake (`python -m tokenforge`), not whatever `tokenforge` is on
# PATH: `.venv/bin/snakemake` works without an activated venv. Under SLURM each job runs `<this python> -m
# snakemake` on its node (a shared file system), so the path holds there too. Under `--sdm conda` a job runs in
# envs/tokenforge.yaml, whose own `python` has tokenforge. Rules take it as params.tokenforge (`--lint` wants no
# globals in shell commands): a job made by another interpreter counts as changed params and is rerun.
PYTHON = shlex.quote(sys.executable)  # the onstart/onsuccess/onerror hooks run here, never in a conda env
_deployment = getattr(workflow, "deployment_settings", None)
JOB_PYTHON = "python" if _deployment and DeploymentMethod.CONDA in _deployment.deployment_method else PYTHON
TOKENFORGE = f"{JOB_PYTHON} -m tokenforge"

R = f"{config['results']}/{config['run']}"  # every output of this run lives under here
TASKS = list(range(config["split"]["tasks"]))

# A `seit:DIR` source is a SeiT token release: it is imported into tokens/ and replaces the
# shard, tokenizer and tokenize stages (there are no images, so no pixel baseline either).
SEIT = config["shard"]["source"].startswith("seit:")
if SEIT and config["train"]["input"] == "pixels":
    raise WorkflowError("config key train.input: 'pixels' needs image shards; a seit: source holds tokens only")
TOKENS = f"{R}/tokens"
TOKENIZER = TOKENS if SEIT else f"{R}/tokenizer"  # the folder with codebook.safetensors + config.json
CODEBOOK = f"{TOKENIZER}/codebook.safetensors"
CLASSES = f"{TOKENS}/classes.json" if SEIT else f"{R}/shard/classes.json"
SYNONYMS = f"{TOKENS}/synonyms.json" if SEIT else f"{R}/synonyms/synonyms.json"
SHARD_STATS = [] if SEIT else f"{R}/shard/stats.json"  # inputs of rules that read images (pixels)
LAST = TASKS[-1]
# shard.parts > 1: shard and tokenize scatter over this many jobs each (part-000 .. part-<P-1>), gathered after
PARTS = [f"{k:03d}" for k in range(config["shard"].get("parts", 1))]

# train.* keys that choose how a training job is launched (resources), not `tokenforge train` flags
LAUNCH_KEYS = ("gpus", "nodes", "processes", "launcher")


def _launch(resources):
    """The launch settings of a training job: its resources, and the config's processes and launcher."""
    return dict(
        gpu=int(resources.get("gpu", 0) or 0),
        nodes=int(resources.get("nodes", 1) or 1),
        processes=config["train"]["processes"],
        launcher=config["train"]["launcher"],
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
    train_launch({"gpu": config["train"]["gpus"], "nodes": config["train"]["nodes"]})
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


def model_option_flags():
    """train.model_options as `--model-option NAME=JSON` flags (models/options/extra.py), in the config's order."""
    options = config["train"].get("model_options") or {}
    return " ".join(shlex.quote(f"--model-option={name}={json.dumps(settings, sort_keys=True)}") for name, settings in options.items())


def track(rule_tags=""):
    """The MLflow flags every job passes: attach to this run's parent, with the run name as a tag."""
    return f"--track {R} --tag run={config['run']} --tag snakemake_version={snakemake.__version__} {rule_tags}"


def previous_task(wildcards):
    """Task t's training starts from task t-1's model and memory: this draws the chain in the DAG."""
    t = int(wildcards.task)
    if t == 0:
        return []
    return expand(f"{R}/train/task-{{t}}/{{f}}", t=t - 1, f=["model.safetensors", "memory.arrows.zst"])


def previous_flag(wildcards):
    t = int(wildcards.task)
    return f"--previous {R}/train/task-{t - 1}" if t > 0 else ""


def tracking_flags():
    uri = config["mlflow"].get("tracking_uri")
    mode = config["mlflow"].get("mode", "auto")  # tokenforge track --help: live, deferred, auto
    return f"--experiment {shlex.quote(config['mlflow']['experiment'])} --mode {mode}" + (
        f" --tracking-uri {shlex.quote(uri)}" if uri else ""
    )


# The optional pretrain stage (55_pretrain.smk): a start for task 0 and/or the masked-token model of replay's
# `memory.fill: mtm`. Settings that cannot work are caught here, before any job runs.
PRETRAIN = config.get("pretrain", {}) or {}
PRETRAIN_MODE = PRETRAIN.get("mode", "none")
PRETRAIN_DIR = f"{R}/pretrain"
FILL_MTM = config["memory"].get("view") == "fill" and config["memory"].get("fill") == "mtm"
if FILL_MTM and PRETRAIN_MODE != "mtm":
    raise WorkflowError("config key memory.fill: mtm needs a masked-token model: set pretrain.mode to mtm")
if PRETRAIN_MODE != "none" and SEIT and PRETRAIN.get("data", "heldout") not in ("heldout", "tasks"):
    raise WorkflowError("config key pretrain.data: a seit: source has no tokenizer to encode another source with")
if (config["train"].get("prompts") or {}).get("tokens", 0) and (PRETRAIN_MODE == "none" or not PRETRAIN.get("init", True)):
    raise WorkflowError("config key train.prompts: prompt tuning needs a backbone for task 0: set pretrain.mode (and pretrain.init)")


def pretrain_inputs(wildcards):
    """What a training job reads from the pretrain stage: task 0 its start (pretrain.init), every task the MTM fill."""
    used = (PRETRAIN_MODE != "none" and PRETRAIN.get("init", True) and int(wildcards.task) == 0) or FILL_MTM
    return [f"{PRETRAIN_DIR}/model.safetensors"] if used else []


def pretrain_flags(wildcards):
    flags = []
    if PRETRAIN_MODE != "none" and PRETRAIN.get("init", True) and int(wildcards.task) == 0:
        flags.append(f"--init {PRETRAIN_DIR}")
    if FILL_MTM:
        flags.append(f"--fill-model {PRETRAIN_DIR}")
    return " ".join(flags)


# The optional tokenadapt stage (35_tokenadapt.smk): the frozen TokenAdapt pair of augment.tokenadapt_p, trained on the
# shards and the tokenizer. Every training job reads it when the stage is on.
TOKENADAPT = config.get("tokenadapt", {}) or {}
TOKENADAPT_ON = bool(TOKENADAPT.get("enabled", False))
TOKENADAPT_DIR = f"{R}/tokenadapt"
if TOKENADAPT_ON and SEIT:
    raise WorkflowError("config key tokenadapt.enabled: a seit: source has no images or tokenizer model to train it on")
if config.get("augment", {}).get("tokenadapt_p", 0) > 0 and not TOKENADAPT_ON:
    raise WorkflowError("config key augment.tokenadapt_p: > 0 needs the adapter: set tokenadapt.enabled to true")


def tokenadapt_inputs(wildcards):
    return [f"{TOKENADAPT_DIR}/adapter.safetensors"] if TOKENADAPT_ON else []


def tokenadapt_flag(wildcards):
    return f"--adapter {TOKENADAPT_DIR}" if TOKENADAPT_ON else ""


# The task family (families/): classification trains the ViT on class labels; vqa and captioning train BLIP on the
# text that a text source (scenes, vqa2:, clevr:, coco-captions:) carries beside its images. Same stages, same files,
# the same launch (train.processes, gpus, nodes); the pretrain stage starts BLIP's vision encoder (families/text_start.py).
FAMILY = config.get("family", "classification")
# --family for a family other than the CLI's default (classification's commands stay as they were)
FAMILY_FLAG = "" if FAMILY == "classification" else f"--family {shlex.quote(FAMILY)}"
MULTIMODAL = bool(getattr(FAMILIES.load(FAMILY), "reads_text", False))  # text beside the images: vqa, captioning
MM = config.get("multimodal", {}) or {}
if MULTIMODAL:
    if SEIT:
        raise WorkflowError(f"config key family: {FAMILY} needs text beside the images; a seit: source has tokens only")
    if TOKENADAPT_ON:
        raise WorkflowError(f"config key family: {FAMILY} has no tokenadapt stage (its augmentations are the ViT's); set tokenadapt.enabled false")
    if PRETRAIN_MODE in ("supervised", "mtm") and PRETRAIN.get("data", "heldout") == "heldout":
        raise WorkflowError(f"config key pretrain.data: heldout needs classes the split leaves out; a {FAMILY} split has none "
                            "(use tasks, the sequence's own images, for mtm, or a source)")
    if MM.get("pretrained") and PRETRAIN_MODE != "none" and PRETRAIN.get("init", True):
        raise WorkflowError("config key multimodal.pretrained: task 0 starts from it or from the pretrain stage, not both (pretrain.init false)")


def split_flags():
    """`tokenforge split` flags beyond the split: section: the family's groups and text tokenizer."""
    if not MULTIMODAL:
        return f"--classes {CLASSES} {FAMILY_FLAG}".strip()
    flags = f"{FAMILY_FLAG} --tokens {TOKENS}/train.parquet --caption-prompt {shlex.quote(MM.get('caption_prompt', 'a picture of'))}"
    if MM.get("split_by"):
        flags += f" --by {MM['split_by']}"
    if MM.get("text_tokenizer"):
        flags += f" --text-tokenizer {shlex.quote(MM['text_tokenizer'])}"
    return flags


def family_train_flags():
    """`tokenforge train` flags of the family: none for classification."""
    if not MULTIMODAL:
        return FAMILY_FLAG
    flags = f"{FAMILY_FLAG} --text-max-len {MM.get('text_max_len', 24)}"
    return flags + (f" --pretrained {shlex.quote(MM['pretrained'])}" if MM.get("pretrained") else "")


def family_evaluate_flags():
    if not MULTIMODAL:
        return FAMILY_FLAG
    return FAMILY_FLAG + (f" --generate-tokens {MM['generate_tokens']}" if MM.get("generate_tokens") else "")
