# The optional tokenadapt stage (tokenadapt.enabled): SeiT++'s TokenAdapt pair f, g, trained on the shards' train
# images and the tokenizer, frozen afterwards; training uses it for augment.tokenadapt_p (train --adapter).
# Its own MLflow child run; outputs in tokenadapt/.

if TOKENADAPT_ON:

    rule tokenadapt:
        input:
            shard=SHARD_STATS,
            tokenizer=f"{TOKENIZER}/model.safetensors",
            tokens=f"{TOKENS}/train.parquet",  # after tokenize: the same tokenizer, pipeline order
        output:
            weights=f"{TOKENADAPT_DIR}/adapter.safetensors",
            config=f"{TOKENADAPT_DIR}/config.json",
            stats=f"{TOKENADAPT_DIR}/stats.json",
        log:
            f"{R}/logs/tokenadapt.log",
        benchmark:
            f"{R}/benchmarks/tokenadapt.tsv"
        params:
            tokenforge=TOKENFORGE,
            args=cli_args({k: v for k, v in TOKENADAPT.items() if k != "enabled"}),
            shards=dirname("input.shard"),
            tokenizer=dirname("input.tokenizer"),
            outdir=dirname("output.weights"),
            seed=config["seed"],
            track=track(),
        threads: config["threads"]
        resources:
            mem_mb=8000,
            runtime=240,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} tokenadapt --shards {params.shards} --tokenizer {params.tokenizer} --out {params.outdir}"
            " {params.args} --seed {params.seed} --threads {threads} {params.track} > {log} 2>&1"
