if not SEIT and len(PARTS) == 1:

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


if not SEIT and len(PARTS) > 1:

    rule shard_part:
        # shard.parts jobs, each a contiguous run of each split's tars (the same tars one job writes)
        output:
            stats=f"{R}/shard/part-{{part}}/stats.json",
        log:
            f"{R}/logs/shard/part-{{part}}.log",
        benchmark:
            f"{R}/benchmarks/shard/part-{{part}}.tsv"
        params:
            tokenforge=TOKENFORGE,
            args=cli_args(config["shard"]),
            outdir=dirname("output.stats"),
            seed=config["seed"],
            track=track(),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=60,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} shard {params.args} --part {wildcards.part} --seed {params.seed} --out {params.outdir}"
            " {params.track} --tag part={wildcards.part} > {log} 2>&1"

    rule shard:
        # gather: the parts' indexes and stats joined into the shard folder's
        input:
            parts=expand(f"{R}/shard/part-{{part}}/stats.json", part=PARTS),
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
            track=track(),
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} shard {params.args} --gather --out {params.outdir} {params.track} > {log} 2>&1"


if not SEIT:

    rule shards:
        # Named partial target: only the WebDataset shards.
        input:
            rules.shard.output,
