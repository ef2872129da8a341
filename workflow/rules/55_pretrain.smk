# The optional pretrain stage (pretrain.mode != none): supervised on data disjoint from the task sequence, label-free
# masked-token modelling, or (input pixels) a local timm checkpoint. Task 0 starts from it (pretrain.init: the ViT's
# backbone; for vqa and captioning BLIP's vision encoder, with mtm on pretrain.data tasks), and replay's memory.fill
# mtm predicts the non-kept tokens with it. Its own MLflow child run; outputs in pretrain/.


rule pretrain:
    input:
        codebook=CODEBOOK,
        tokens=f"{TOKENS}/train.parquet",
        shards=SHARD_STATS,
        split=rules.split.output.tasks,
        checkpoint=[PRETRAIN["timm_checkpoint"]] if PRETRAIN.get("timm_checkpoint") else [],
    output:
        model=f"{PRETRAIN_DIR}/model.safetensors",
        model_config=f"{PRETRAIN_DIR}/model.json",
        stats=f"{PRETRAIN_DIR}/stats.json",
    log:
        f"{R}/logs/pretrain.log",
    benchmark:
        f"{R}/benchmarks/pretrain.tsv"
    params:
        tokenforge=TOKENFORGE,
        # the architecture is train's: task 0 inherits the pretrained model's
        args=cli_args({k: v for k, v in PRETRAIN.items() if k not in ("init", "timm_kwargs")}),
        timm_kwargs=f"--timm-kwargs {shlex.quote(json.dumps(PRETRAIN['timm_kwargs']))}" if PRETRAIN.get("timm_kwargs") else "",
        arch=cli_args({k: config["train"][k] for k in ("input", "embed_dim", "depth", "num_heads", "mlp_ratio")}),
        tokenizer=dirname("input.codebook"),
        shards="" if SEIT else f"--shards {R}/shard",
        split=dirname("input.split"),
        outdir=dirname("output.model"),
        seed=config["seed"],
        track=track(),
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.tokenforge} pretrain {params.args} {params.timm_kwargs} {params.arch} --tokens {input.tokens} {params.shards}"
        " --split {params.split} --tokenizer {params.tokenizer} --out {params.outdir} --seed {params.seed}"
        " --threads {threads} {params.track} > {log} 2>&1"
