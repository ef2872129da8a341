if not SEIT:

    rule synonyms:
        input:
            tokenizer=rules.tokenizer.output.weights,
        output:
            f"{R}/synonyms/synonyms.json",
        log:
            f"{R}/logs/synonyms.log",
        benchmark:
            f"{R}/benchmarks/synonyms.tsv"
        params:
            tokenforge=TOKENFORGE,
            args=cli_args(config["synonyms"]),
            tokenizer=dirname("input.tokenizer"),
            track=track(),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} synonyms --tokenizer {params.tokenizer} --out {output} {params.args} {params.track} > {log} 2>&1"
