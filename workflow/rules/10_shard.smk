# Group "data" (tokenforge.experiment.STAGE_KEYS): one shard per data settings and data seed.
if not SEIT and len(PARTS) == 1:

    rule shard:
        output:
            index=path("data", "shard/index.parquet"),
            classes=path("data", "shard/classes.json"),
            stats=path("data", "shard/stats.json"),
        log:
            path("data", "logs/shard.log"),
        benchmark:
            path("data", "benchmarks/shard.tsv")
        params:
            tokenforge=TOKENFORGE,
            args=section_args("data", "shard"),
            outdir=dirname("output.index"),
            seed=cfg("data", data_seed),
            track=track("data"),
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
            stats=path("data", "shard/part-{part}/stats.json"),
        log:
            path("data", "logs/shard/part-{part}.log"),
        benchmark:
            path("data", "benchmarks/shard/part-{part}.tsv")
        params:
            tokenforge=TOKENFORGE,
            args=section_args("data", "shard"),
            outdir=dirname("output.stats"),
            seed=cfg("data", data_seed),
            track=track("data"),
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
            parts=expand(path("data", "shard/part-{part}/stats.json"), part=PARTS, allow_missing=True),
        output:
            index=path("data", "shard/index.parquet"),
            classes=path("data", "shard/classes.json"),
            stats=path("data", "shard/stats.json"),
        log:
            path("data", "logs/shard.log"),
        benchmark:
            path("data", "benchmarks/shard.tsv")
        params:
            tokenforge=TOKENFORGE,
            args=section_args("data", "shard"),
            outdir=dirname("output.index"),
            track=track("data"),
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
        # Named partial target: only the WebDataset shards (of every data setting in the experiment).
        input:
            expand(f"{RESULTS}/{{root}}/shard/stats.json", root=OWNER["data"]),
