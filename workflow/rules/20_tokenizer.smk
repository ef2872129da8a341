# Group "tokens": the tokenizer, tokens and synonyms, once per data and tokenizer settings.
if not SEIT:

    rule tokenizer:
        input:
            stats=at("tokens", "data", "shard/stats.json"),
            pretrained=pretrained_vq,
        output:
            weights=path("tokens", "tokenizer/model.safetensors"),
            config=path("tokens", "tokenizer/config.json"),
            codebook=path("tokens", "tokenizer/codebook.safetensors"),
            grid=report(
                path("tokens", "tokenizer/reconstructions.png"),
                caption="../report/reconstructions.rst",
                category="Tokenizer",
            ),
            stats=report(path("tokens", "tokenizer/stats.json"), caption="../report/tokenizer.rst", category="Tokenizer"),
        log:
            path("tokens", "logs/tokenizer.log"),
        benchmark:
            path("tokens", "benchmarks/tokenizer.tsv")
        params:
            tokenforge=TOKENFORGE,
            args=cfg("tokens", tokenizer_flags),
            shards=dirname("input.stats"),
            outdir=dirname("output.weights"),
            seed=cfg("tokens", data_seed),
            track=track("tokens"),
        threads: THREADS
        resources:
            mem_mb=4000,
            runtime=120,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} tokenizer --shards {params.shards} --out {params.outdir} {params.args} --seed {params.seed}"
            " --threads {threads} {params.track} > {log} 2>&1"
