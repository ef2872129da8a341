if not SEIT:

    rule shard:
        output:
            index=f"{R}/shard/index.parquet",
            classes=f"{R}/shard/classes.json",
            stats=f"{R}/shard/stats.json",
        log:
            f"{R}/logs/shard.log",
        benchmark:
            f"{R}/benchmarks/shard.tsv"
        params:
            tokenforge=TOKENFORGE,
            args=cli_args(config["shard"]),
            outdir=dirname("output.index"),
            seed=config["seed"],
            track=track(),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=60,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} shard {params.args} --seed {params.seed} --out {params.outdir} {params.track} > {log} 2>&1"


    rule shards:
        # Named partial target: only the WebDataset shards.
        input:
            rules.shard.output,
