rule evaluate:
    input:
        model=rules.train.output.model,
        tokens=f"{TOKENS}/test.parquet",
        shards=SHARD_STATS,
        split=rules.split.output.tasks,
    output:
        f"{R}/evaluate/task-{{task}}.json",
    log:
        f"{R}/logs/evaluate/task-{{task}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/task-{{task}}.tsv"
    params:
        tokenforge=TOKENFORGE,
        args=cli_args(config["evaluate"]),
        model=dirname("input.model"),
        split=dirname("input.split"),
        shards="" if SEIT else f"--shards {R}/shard",
        family=family_evaluate_flags(),
        track=lambda w: track(f"--tag task={w.task}"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.tokenforge} evaluate --model {params.model} --tokens {input.tokens} {params.shards} --split {params.split}"
        " --task {wildcards.task} {params.family} --out {output} {params.args} {params.track} > {log} 2>&1"
