if SEIT:

    rule seit_import:
        # A SeiT token release (seit:DIR) becomes tokens/: token Parquet, codebook, classes, synonyms.
        output:
            train=path("tokens", "tokens/train.parquet"),
            test=path("tokens", "tokens/test.parquet"),
            stats=path("tokens", "tokens/stats.json"),
            codebook=path("tokens", "tokens/codebook.safetensors"),
            classes=path("tokens", "tokens/classes.json"),
            synonyms=path("tokens", "tokens/synonyms.json"),
        log:
            path("tokens", "logs/seit_import.log"),
        benchmark:
            path("tokens", "benchmarks/seit_import.tsv")
        params:
            tokenforge=TOKENFORGE,
            src=cfg("tokens", lambda c: c["shard"]["source"].removeprefix("seit:")),
            k=cfg("tokens", lambda c: c["synonyms"]["k"]),
            outdir=dirname("output.train"),
            track=track("tokens"),
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
            expand(f"{RESULTS}/{{root}}/tokens/stats.json", root=OWNER["tokens"]),
