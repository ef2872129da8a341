# Group "run": every variant's own task sequence, in its folder (a single run's: <results>/<run>/).
rule train:
    input:
        tokens=at("run", "tokens", "tokens/train.parquet"),
        shards=shard_stats("run"),
        codebook=at("run", "tokens", f"{TOKENIZER_REL}/codebook.safetensors"),
        split=at("run", "split", "split/tasks.json"),
        deepspeed=cfg("run", lambda c: c["train"]["deepspeed_config"]),
        synonyms=at("run", *SYNONYMS_AT),
        previous=previous_task,
        pretrain=pretrain_inputs,
        adapter=tokenadapt_inputs,
    output:
        model=path("run", "train/task-{task}/model.safetensors"),
        model_config=path("run", "train/task-{task}/model.json"),
        memory=path("run", "train/task-{task}/memory.arrows.zst"),
        stats=path("run", "train/task-{task}/stats.json"),
    log:
        path("run", "logs/train/task-{task}.log"),
    benchmark:
        path("run", "benchmarks/train/task-{task}.tsv")
    params:
        # From the job's resources: one process (CPU or one GPU), one per GPU or train.processes on a node (torchrun
        # or the deepspeed launcher), or srun + torchrun across nodes. Data parallel; rank 0 writes the outputs.
        # Every program but srun is a module of the job's Python (train_launch in common.smk): no PATH needed.
        launch=lambda w, resources: train_launch(resources),
        # the variant's settings: family, previous task, pretrained start, adapter, train/memory/augment/ToE/prompt
        # flags; checkpoints outside the declared outputs, so a killed job's rerun (--rerun-incomplete) resumes
        args=train_args,
        tokenizer=dirname("input.codebook"),
        shards=shards_flag("run"),
        split=dirname("input.split"),
        outdir=dirname("output.model"),
        seed=cfg("run", lambda c: c["seed"]),
        threads=lambda w, threads, resources: max(1, threads // train_processes(resources)),
        track=track("run", "--tag task={task}"),
    threads: THREADS
    resources:
        **TRAIN_RESOURCES,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.launch} train --tokens {input.tokens} {params.shards} --tokenizer {params.tokenizer} --split {params.split}"
        " --task {wildcards.task} --out {params.outdir} {params.args}"
        " --synonyms {input.synonyms} --seed {params.seed} --threads {params.threads} {params.track} > {log} 2>&1"


# Named partial targets task_0 ... task_<N-1>: train and evaluate up to task k (every variant that has it),
# e.g. `snakemake task_2`.
for _t in range(max(v.config["split"]["tasks"] for v in VARIANTS)):

    rule:
        name:
            f"task_{_t}"
        input:
            [f"{RESULTS}/{v.roots['run']}/evaluate/task-{_t}.json" for v in VARIANTS if v.config["split"]["tasks"] > _t],
