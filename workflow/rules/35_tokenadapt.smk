# The optional tokenadapt stage (tokenadapt.enabled): SeiT++'s TokenAdapt pair f, g, trained on the shards' train
# images and the tokenizer, frozen afterwards; training uses it for augment.tokenadapt_p (train --adapter).
# Its own MLflow child run; outputs in tokenadapt/ (group "tokenadapt": once per tokens, its settings and seed).

if any(tokenadapt_on(v.config) for v in VARIANTS):

    rule tokenadapt:
        input:
            shard=shard_stats("tokenadapt"),
            tokenizer=at("tokenadapt", "tokens", f"{TOKENIZER_REL}/model.safetensors"),
            tokens=at("tokenadapt", "tokens", "tokens/train.parquet"),  # after tokenize: the same tokenizer, pipeline order
        output:
            weights=path("tokenadapt", "tokenadapt/adapter.safetensors"),
            config=path("tokenadapt", "tokenadapt/config.json"),
            stats=path("tokenadapt", "tokenadapt/stats.json"),
        log:
            path("tokenadapt", "logs/tokenadapt.log"),
        benchmark:
            path("tokenadapt", "benchmarks/tokenadapt.tsv")
        params:
            tokenforge=TOKENFORGE,
            args=section_args("tokenadapt", "tokenadapt", drop=("enabled",)),
            shards=dirname("input.shard"),
            tokenizer=dirname("input.tokenizer"),
            outdir=dirname("output.weights"),
            seed=cfg("tokenadapt", lambda c: c["seed"]),
            track=track("tokenadapt"),
        threads: THREADS
        resources:
            mem_mb=8000,
            runtime=240,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} tokenadapt --shards {params.shards} --tokenizer {params.tokenizer} --out {params.outdir}"
            " {params.args} --seed {params.seed} --threads {threads} {params.track} > {log} 2>&1"
