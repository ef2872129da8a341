if not SEIT and len(PARTS) == 1:

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


if not SEIT and len(PARTS) > 1:

    rule tokenize_part:
        # one job per shard part: its tars' token files, in tokens-parts/part-KKK/
        input:
            shard=rules.shard.output.stats,
            tokenizer=rules.tokenizer.output.weights,
        output:
            stats=f"{R}/tokens-parts/part-{{part}}/stats.json",
        log:
            f"{R}/logs/tokenize/part-{{part}}.log",
        benchmark:
            f"{R}/benchmarks/tokenize/part-{{part}}.tsv"
        params:
            tokenforge=TOKENFORGE,
            args=cli_args(config["tokenize"]),
            shards=dirname("input.shard"),
            tokenizer=dirname("input.tokenizer"),
            outdir=dirname("output.stats"),
            track=track(),
        threads: config["threads"]
        resources:
            mem_mb=4000,
            runtime=120,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} tokenize --shards {params.shards} --tokenizer {params.tokenizer} --part {wildcards.part}"
            " --out {params.outdir} {params.args} --threads {threads} {params.track} --tag part={wildcards.part}"
            " > {log} 2>&1"

    rule tokenize:
        # gather: the parts' token files joined in key order, a row group at a time
        input:
            shard=rules.shard.output.stats,
            tokenizer=rules.tokenizer.output.weights,
            parts=expand(f"{R}/tokens-parts/part-{{part}}/stats.json", part=PARTS),
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
            shards=dirname("input.shard"),
            tokenizer=dirname("input.tokenizer"),
            parts=lambda wildcards, input: " ".join(os.path.dirname(p) for p in input.parts),
            outdir=dirname("output.train"),
            track=track(),
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} tokenize --shards {params.shards} --tokenizer {params.tokenizer} --gather {params.parts}"
            " --out {params.outdir} {params.track} > {log} 2>&1"


if not SEIT:

    rule tokens:
        # Named partial target: shards, tokenizer and token datasets.
        input:
            rules.tokenize.output,
