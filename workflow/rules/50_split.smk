# Group "split": once per tokens, split settings and seed (classification reads the classes, vqa/captioning the train
# text: groups, text tokenizer).
_SAME_TASKS = len({v.config["split"]["tasks"] for v in VARIANTS}) == 1


rule split:
    input:
        classes=at("split", "tokens", "tokens/train.parquet") if MULTIMODAL else at("split", *CLASSES_AT),
    output:
        tasks=path("split", "split/tasks.json"),
        # one manifest per task (declared where every variant has the same number of tasks)
        manifests=expand(path("split", "split/task-{task}.json"), task=tasks(BASE), allow_missing=True) if _SAME_TASKS else [],
    log:
        path("split", "logs/split.log"),
    benchmark:
        path("split", "benchmarks/split.tsv")
    params:
        tokenforge=TOKENFORGE,
        args=section_args("split", "split"),
        outdir=dirname("output.tasks"),
        seed=cfg("split", lambda c: c["seed"]),
        family=split_flags("split"),
        track=track("split"),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.tokenforge} split {params.family} --out {params.outdir} {params.args} --seed {params.seed}"
        " {params.track} > {log} 2>&1"
