# tokenforge: class-incremental ViT training on VQ tokens with core-token replay memories.
#
# Results of a run live in <results>/<run>/ (results/default/ for the embedded default). An experiment (a config with
# an `experiment:` grid, config/experiments/*.yaml; tokenforge/experiment.py) runs every variant in this one DAG:
# <results>/<run>/runs/<variant>/ holds a variant's own stages (train, evaluate, package), shared/<stage>-<hash>/ each
# stage that variants share (run once for all whose inputs to it are equal), and <results>/<run>/ the comparison
# (comparison.{csv,md,json}, accuracy_vs_bytes.png, report.html: 80_package.smk) and experiment.json. A single run:
#   shard/       WebDataset tar shards + index.parquet          (workflow/rules/10_shard.smk; shard.parts > 1:
#                the tars in part-000/ ... , one shard job each, gathered; tokenize then runs one job per part
#                into tokens-parts/part-KKK/, gathered into tokens/)
#   tokenizer/   VQ autoencoder weights (safetensors) + stats   (20_tokenizer.smk)
#   tokens/      token grids as Parquet, bytes per image        (30_tokenize.smk)
#                (a seit:DIR source is imported here instead of shard/tokenizer/tokenize: 15_seit.smk)
#   tokenadapt/  optional TokenAdapt pair f, g                  (35_tokenadapt.smk; tokenadapt.enabled)
#   synonyms/    k nearest codes per code                       (40_synonyms.smk)
#   split/       one manifest per task                          (50_split.smk)
#   pretrain/    optional start for task 0 / MTM fill model     (55_pretrain.smk; pretrain.mode != none)
#   train/task-<t>/  model + replay memory after task t         (60_train.smk)
#   control/blind/  VQA, captioning: the question-only control  (65_control.smk; multimodal.blind_control)
#   evaluate/    row t of the accuracy matrix                   (70_evaluate.smk)
#   package/     metrics, plots, report.html, final model; tokenforge-results.tar.gz (80_package.smk)
#   mlflow.db, mlartifacts/, mlflow/parent.json: the MLflow store (mlflow/spool/: what jobs log in deferred mode,
#                until `tokenforge track sync|end` replays it: mlflow.mode); logs/, benchmarks/: per job
#
# Named partial targets: shards, tokens, and task_<k> (everything up to task k).

from snakemake.utils import min_version

min_version("8.20")


configfile: "config/config.yaml"


wildcard_constraints:
    task=r"\d+",
    part=r"\d{3}",



include: "workflow/rules/common.smk"
include: "workflow/rules/stage_args.smk"


# Each stage group's folders (common.smk WC): a wildcard matches only the folders this experiment has.
workflow.global_wildcard_constraints(**WILDCARD_CONSTRAINTS)


include: "workflow/rules/warm.smk"
# MLflow: one parent run per invocation (not on dry runs); every job logs a child run under it. The hooks run in this
# process, so through this Python's CLI (PYTHON, common.smk) even where a job's is a conda env's.
onstart:
    # A new parent MLflow run for this invocation, with the resolved config as params; in an experiment, a child run
    # per variant with its grid settings (experiment.json), under which the variant's jobs log.
    write_resolved()
    variants = f" --variants {E}/experiment.json" if GRID else ""
    shell(f"{PYTHON} -m tokenforge track start {E} --config {E}/config.resolved.yaml{variants} {tracking_flags()} -q || true")
    warm_start()  # after track start, which would otherwise wait for the server to finish importing


onsuccess:
    # Replays the jobs' spool into the store in deferred mode (mlflow.mode), then ends the parent run.
    shell(f"{PYTHON} -m tokenforge track end {E} --status FINISHED -q || true")
    warm_stop()


onerror:
    shell(f"{PYTHON} -m tokenforge track end {E} --status FAILED -q || true")
    warm_stop()


include: "workflow/rules/10_shard.smk"
include: "workflow/rules/15_seit.smk"
include: "workflow/rules/20_tokenizer.smk"
include: "workflow/rules/30_tokenize.smk"
include: "workflow/rules/35_tokenadapt.smk"
include: "workflow/rules/40_synonyms.smk"
include: "workflow/rules/50_split.smk"
include: "workflow/rules/55_pretrain.smk"
include: "workflow/rules/60_train.smk"
include: "workflow/rules/65_control.smk"
include: "workflow/rules/70_evaluate.smk"
include: "workflow/rules/80_package.smk"


rule all:
    input:
        [f"{RESULTS}/{v.roots['run']}/{f}" for v in VARIANTS for f in ("package/metrics.json", "tokenforge-results.tar.gz")],
        COMPARISON if GRID else [],
    default_target: True
