rule evaluate:
    input:
        model=path("run", "train/task-{task}/model.safetensors"),
        tokens=at("run", "tokens", "tokens/test.parquet"),
        shards=shard_stats("run"),
        split=at("run", "split", "split/tasks.json"),
    output:
        path("run", "evaluate/task-{task}.json"),
    log:
        path("run", "logs/evaluate/task-{task}.log"),
    benchmark:
        path("run", "benchmarks/evaluate/task-{task}.tsv")
    params:
        tokenforge=TOKENFORGE,
        args=section_args("run", "evaluate"),
        model=dirname("input.model"),
        split=dirname("input.split"),
        shards=shards_flag("run"),
        family=cfg("run", family_evaluate_flags),
        track=track("run", "--tag task={task}"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.tokenforge} evaluate --model {params.model} --tokens {input.tokens} {params.shards} --split {params.split}"
        " --task {wildcards.task} {params.family} --out {output} {params.args} {params.track} > {log} 2>&1"
