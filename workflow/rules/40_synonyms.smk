if not SEIT:

    rule synonyms:
        input:
            tokenizer=path("tokens", "tokenizer/model.safetensors"),
        output:
            path("tokens", "synonyms/synonyms.json"),
        log:
            path("tokens", "logs/synonyms.log"),
        benchmark:
            path("tokens", "benchmarks/synonyms.tsv")
        params:
            tokenforge=TOKENFORGE,
            args=section_args("tokens", "synonyms"),
            tokenizer=dirname("input.tokenizer"),
            track=track("tokens"),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} synonyms --tokenizer {params.tokenizer} --out {output} {params.args} {params.track} > {log} 2>&1"
