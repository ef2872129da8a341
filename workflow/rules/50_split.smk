rule split:
    input:
        # classification: the class names; vqa/captioning: the train text (groups, text tokenizer)
        classes=f"{TOKENS}/train.parquet" if MULTIMODAL else CLASSES,
    output:
        tasks=f"{R}/split/tasks.json",
        manifests=expand(f"{R}/split/task-{{task}}.json", task=TASKS),
    log:
        f"{R}/logs/split.log",
    benchmark:
        f"{R}/benchmarks/split.tsv"
    params:
        tokenforge=TOKENFORGE,
        args=cli_args(config["split"]),
        outdir=dirname("output.tasks"),
        seed=config["seed"],
        family=split_flags(),
        track=track(),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.tokenforge} split {params.family} --out {params.outdir} {params.args} --seed {params.seed}"
        " {params.track} > {log} 2>&1"
