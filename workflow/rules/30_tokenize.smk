if not SEIT:

    rule tokenize:
        input:
            shard=rules.shard.output.stats,
            tokenizer=rules.tokenizer.output.weights,
        output:
            train=f"{R}/tokens/train.parquet",
            test=f"{R}/tokens/test.parquet",
            stats=f"{R}/tokens/stats.json",
        log:
            f"{R}/logs/tokenize.log",
        benchmark:
            f"{R}/benchmarks/tokenize.tsv"
        params:
            tokenforge=TOKENFORGE,
            args=cli_args(config["tokenize"]),
            shards=dirname("input.shard"),
            tokenizer=dirname("input.tokenizer"),
            outdir=dirname("output.train"),
            track=track(),
        threads: config["threads"]
        resources:
            mem_mb=4000,
            runtime=120,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} tokenize --shards {params.shards} --tokenizer {params.tokenizer} --out {params.outdir}"
            " {params.args} --threads {threads} {params.track} > {log} 2>&1"


    rule tokens:
        # Named partial target: shards, tokenizer and token datasets.
        input:
            rules.tokenize.output,
