if SEIT:

    rule seit_import:
        # A SeiT token release (seit:DIR) becomes tokens/: token Parquet, codebook, classes, synonyms.
        output:
            train=f"{TOKENS}/train.parquet",
            test=f"{TOKENS}/test.parquet",
            stats=f"{TOKENS}/stats.json",
            codebook=CODEBOOK,
            classes=CLASSES,
            synonyms=SYNONYMS,
        log:
            f"{R}/logs/seit_import.log",
        benchmark:
            f"{R}/benchmarks/seit_import.tsv"
        params:
            tokenforge=TOKENFORGE,
            src=config["shard"]["source"].removeprefix("seit:"),
            k=config["synonyms"]["k"],
            outdir=dirname("output.train"),
            track=track(),
        threads: 1
        resources:
            mem_mb=8000,
            runtime=120,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} seit import --src {params.src:q} --out {params.outdir} --synonyms-k {params.k}"
            " {params.track} > {log} 2>&1"

    rule tokens:
        # Named partial target: the imported token datasets.
        input:
            rules.seit_import.output,
