if not SEIT:

    rule tokenizer:
        input:
            stats=rules.shard.output.stats,
        output:
            weights=f"{R}/tokenizer/model.safetensors",
            config=f"{R}/tokenizer/config.json",
            codebook=CODEBOOK,
            grid=report(
                f"{R}/tokenizer/reconstructions.png",
                caption="../report/reconstructions.rst",
                category="Tokenizer",
            ),
            stats=report(f"{R}/tokenizer/stats.json", caption="../report/tokenizer.rst", category="Tokenizer"),
        log:
            f"{R}/logs/tokenizer.log",
        benchmark:
            f"{R}/benchmarks/tokenizer.tsv"
        params:
            tokenforge=TOKENFORGE,
            args=cli_args(config["tokenizer"]),
            shards=dirname("input.stats"),
            outdir=dirname("output.weights"),
            seed=config["seed"],
            track=track(),
        threads: config["threads"]
        resources:
            mem_mb=4000,
            runtime=120,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} tokenizer --shards {params.shards} --out {params.outdir} {params.args} --seed {params.seed}"
            " --threads {threads} {params.track} > {log} 2>&1"
