STAGE_STATS = {
    **({} if SEIT else {"shard": f"{R}/shard/stats.json", "tokenizer": f"{R}/tokenizer/stats.json"}),
    "tokenize": f"{TOKENS}/stats.json",
    **({"tokenadapt": f"{TOKENADAPT_DIR}/stats.json"} if TOKENADAPT_ON else {}),
    **({"pretrain": f"{PRETRAIN_DIR}/stats.json"} if PRETRAIN_MODE != "none" else {}),
    **{f"train-{t}": f"{R}/train/task-{t}/stats.json" for t in TASKS},
    **{f"evaluate-{t}": f"{R}/evaluate/task-{t}.json" for t in TASKS},
}


rule package:
    input:
        evaluations=expand(f"{R}/evaluate/task-{{t}}.json", t=TASKS),
        stats=list(STAGE_STATS.values()),
        synonyms=SYNONYMS,
        model=f"{R}/train/task-{LAST}/model.safetensors",
        images=[] if SEIT else f"{R}/tokenizer/reconstructions.png",
    output:
        metrics=f"{R}/package/metrics.json",
        matrix=report(f"{R}/package/accuracy_matrix.png", caption="../report/accuracy_matrix.rst", category="Results"),
        curve=report(f"{R}/package/average_accuracy.png", caption="../report/average_accuracy.rst", category="Results"),
        html=f"{R}/package/report.html",
        archive=f"{R}/tokenforge-results.tar.gz",
    log:
        f"{R}/logs/package.log",
    benchmark:
        f"{R}/benchmarks/package.tsv"
    params:
        tokenforge=TOKENFORGE,
        stats=" ".join(f"{name}={path}" for name, path in STAGE_STATS.items()),
        outdir=dirname("output.metrics"),
        config=f"{R}/config.resolved.yaml",
        title=f"tokenforge run '{config['run']}'",
        images=lambda w, input: f"--images reconstructions={input.images}" if input.images else "",
        track=track(),
        registered=config["mlflow"]["registered_model"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.tokenforge} package --evaluations {input.evaluations} --stats {params.stats} --model {input.model}"
        " --config {params.config} --out {params.outdir} --archive {output.archive} --title {params.title:q}"
        " {params.images} --registered-model {params.registered:q}"
        " {params.track} > {log} 2>&1"
