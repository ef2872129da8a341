# Group "tokens" (with the tokenizer): the token grids, once per data and tokenizer settings.
if not SEIT and len(PARTS) == 1:

    rule tokenize:
        input:
            shard=at("tokens", "data", "shard/stats.json"),
            tokenizer=path("tokens", "tokenizer/model.safetensors"),
        output:
            train=path("tokens", "tokens/train.parquet"),
            test=path("tokens", "tokens/test.parquet"),
            stats=path("tokens", "tokens/stats.json"),
        log:
            path("tokens", "logs/tokenize.log"),
        benchmark:
            path("tokens", "benchmarks/tokenize.tsv")
        params:
            tokenforge=TOKENFORGE,
            args=section_args("tokens", "tokenize"),
            shards=dirname("input.shard"),
            tokenizer=dirname("input.tokenizer"),
            outdir=dirname("output.train"),
            track=track("tokens"),
        threads: THREADS
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
            shard=at("tokens", "data", "shard/stats.json"),
            tokenizer=path("tokens", "tokenizer/model.safetensors"),
        output:
            stats=path("tokens", "tokens-parts/part-{part}/stats.json"),
        log:
            path("tokens", "logs/tokenize/part-{part}.log"),
        benchmark:
            path("tokens", "benchmarks/tokenize/part-{part}.tsv")
        params:
            tokenforge=TOKENFORGE,
            args=section_args("tokens", "tokenize"),
            shards=dirname("input.shard"),
            tokenizer=dirname("input.tokenizer"),
            outdir=dirname("output.stats"),
            track=track("tokens"),
        threads: THREADS
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
            shard=at("tokens", "data", "shard/stats.json"),
            tokenizer=path("tokens", "tokenizer/model.safetensors"),
            parts=expand(path("tokens", "tokens-parts/part-{part}/stats.json"), part=PARTS, allow_missing=True),
        output:
            train=path("tokens", "tokens/train.parquet"),
            test=path("tokens", "tokens/test.parquet"),
            stats=path("tokens", "tokens/stats.json"),
        log:
            path("tokens", "logs/tokenize.log"),
        benchmark:
            path("tokens", "benchmarks/tokenize.tsv")
        params:
            tokenforge=TOKENFORGE,
            shards=dirname("input.shard"),
            tokenizer=dirname("input.tokenizer"),
            parts=lambda wildcards, input: " ".join(os.path.dirname(p) for p in input.parts),
            outdir=dirname("output.train"),
            track=track("tokens"),
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
        # Named partial target: shards, tokenizer and token datasets (of every setting in the experiment).
        input:
            expand(f"{RESULTS}/{{root}}/tokens/stats.json", root=OWNER["tokens"]),
