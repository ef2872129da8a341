rule train:
    input:
        tokens=f"{TOKENS}/train.parquet",
        shards=SHARD_STATS,
        codebook=CODEBOOK,
        split=rules.split.output.tasks,
        deepspeed=config["train"]["deepspeed_config"],
        synonyms=SYNONYMS,
        previous=previous_task,
        pretrain=pretrain_inputs,
        adapter=tokenadapt_inputs,
    output:
        model=f"{R}/train/task-{{task}}/model.safetensors",
        model_config=f"{R}/train/task-{{task}}/model.json",
        memory=f"{R}/train/task-{{task}}/memory.arrows.zst",
        stats=f"{R}/train/task-{{task}}/stats.json",
    log:
        f"{R}/logs/train/task-{{task}}.log",
    benchmark:
        f"{R}/benchmarks/train/task-{{task}}.tsv"
    params:
        args=cli_args({k: v for k, v in config["train"].items() if k not in LAUNCH_KEYS and k not in ("token_expansion", "prompts", "model_options")}),
        # From the job's resources: one process (CPU or one GPU), one per GPU or train.processes on a node (torchrun
        # or the deepspeed launcher), or srun + torchrun across nodes. Data parallel; rank 0 writes the outputs.
        # Every program but srun is a module of the job's Python (train_launch in common.smk): no PATH needed.
        launch=lambda w, resources: train_launch(resources),
        # budget null means no limit, which the CLI spells "none" (its own default is 10%)
        memory=cli_args({**config["memory"], "budget": config["memory"]["budget"] or "none"}, prefix="memory-"),
        augment=cli_args(config["augment"], prefix="augment-"),
        toe=cli_args(config["train"].get("token_expansion", {}), prefix="toe-"),
        prompts=cli_args(config["train"].get("prompts", {}), prefix="prompt-"),
        model_options=model_option_flags(),
        previous=previous_flag,
        pretrain=pretrain_flags,
        adapter=tokenadapt_flag,
        family=family_train_flags(),
        tokenizer=dirname("input.codebook"),
        shards="" if SEIT else f"--shards {R}/shard",
        split=dirname("input.split"),
        outdir=dirname("output.model"),
        # Outside the declared outputs, so a killed job's rerun (--rerun-incomplete) resumes from it.
        checkpoints=lambda w: f"{R}/checkpoints/train/task-{w.task}",
        seed=config["seed"],
        threads=lambda w, threads, resources: max(1, threads // train_processes(resources)),
        track=lambda w: track(f"--tag task={w.task}"),
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=config["train"]["gpus"],
        nodes=config["train"]["nodes"],
        # several nodes: one SLURM task per node, and the job's shell calls srun itself (the plugin does not wrap it)
        **({"tasks": config["train"]["nodes"], "mpi": "srun"} if config["train"]["nodes"] > 1 else {}),
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.launch} train --tokens {input.tokens} {params.shards} --tokenizer {params.tokenizer} --split {params.split}"
        " --task {wildcards.task} {params.family} {params.previous} {params.pretrain} --out {params.outdir} {params.args} {params.memory}"
        " --checkpoint-dir {params.checkpoints}"
        " --synonyms {input.synonyms} {params.augment} {params.adapter} {params.toe} {params.prompts} {params.model_options}"
        " --seed {params.seed} --threads {params.threads} {params.track} > {log} 2>&1"


# Named partial targets task_0 ... task_<N-1>: train and evaluate up to task k, e.g. `snakemake task_2`.
for _t in TASKS:

    rule:
        name:
            f"task_{_t}"
        input:
            f"{R}/evaluate/task-{_t}.json",
