# The optional pretrain stage (pretrain.mode != none): supervised on data disjoint from the task sequence, label-free
# masked-token modelling, or (input pixels) a local timm checkpoint. Task 0 starts from it (pretrain.init: the ViT's
# backbone; for vqa and captioning BLIP's vision encoder, with mtm on pretrain.data tasks), and replay's memory.fill
# mtm predicts the non-kept tokens with it. Its own MLflow child run; outputs in pretrain/ (group "pretrain": once per
# its own keys, the architecture's, the split's and the tokens').


rule pretrain:
    input:
        codebook=at("pretrain", "tokens", f"{TOKENIZER_REL}/codebook.safetensors"),
        tokens=at("pretrain", "tokens", "tokens/train.parquet"),
        shards=shard_stats("pretrain"),
        split=at("pretrain", "split", "split/tasks.json"),
        checkpoint=timm_checkpoint,
    output:
        model=path("pretrain", "pretrain/model.safetensors"),
        model_config=path("pretrain", "pretrain/model.json"),
        stats=path("pretrain", "pretrain/stats.json"),
    log:
        path("pretrain", "logs/pretrain.log"),
    benchmark:
        path("pretrain", "benchmarks/pretrain.tsv")
    params:
        tokenforge=TOKENFORGE,
        args=cfg("pretrain", pretrain_args),
        tokenizer=dirname("input.codebook"),
        shards=shards_flag("pretrain"),
        split=dirname("input.split"),
        outdir=dirname("output.model"),
        seed=cfg("pretrain", lambda c: c["seed"]),
        track=track("pretrain"),
    threads: THREADS
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.tokenforge} pretrain {params.args} --tokens {input.tokens} {params.shards}"
        " --split {params.split} --tokenizer {params.tokenizer} --out {params.outdir} --seed {params.seed}"
        " --threads {threads} {params.track} > {log} 2>&1"
