# tokenizer.pretrained: a local diffusers VQModel folder used instead of training one (`tokenforge tokenizer
# --pretrained DIR`); the rule writes the same folder either way, so tokenize and synonyms do not know the difference.
PRETRAINED_VQ = config["tokenizer"].get("pretrained")
# The flags the import reads; passing the training ones (epochs, lr, ...) would only rerun it when they change.
PRETRAINED_FLAGS = ("pretrained", "max_images", "prune", "device")
if not SEIT and PRETRAINED_VQ and not Path(PRETRAINED_VQ, "config.json").is_file():
    raise WorkflowError(
        f"config key tokenizer.pretrained: {PRETRAINED_VQ}: no config.json; expected a local diffusers VQModel "
        "folder written by save_pretrained"
    )
# The tokenizer section's keys that become `tokenforge tokenizer` flags: all of them to train, PRETRAINED_FLAGS to import.
TOKENIZER_FLAGS = {k: v for k, v in config["tokenizer"].items() if not PRETRAINED_VQ or k in PRETRAINED_FLAGS}


if not SEIT:

    rule tokenizer:
        input:
            stats=rules.shard.output.stats,
            pretrained=[f"{PRETRAINED_VQ}/config.json"] if PRETRAINED_VQ else [],  # a new model there reruns it
        output:
            weights=f"{R}/tokenizer/model.safetensors",
            config=f"{R}/tokenizer/config.json",
            codebook=CODEBOOK,
            grid=report(
                f"{R}/tokenizer/reconstructions.png",
                caption="../report/reconstructions.rst",
                category="Tokenizer",
            ),
            stats=report(f"{R}/tokenizer/stats.json", caption="../report/tokenizer.rst", category="Tokenizer"),
        log:
            f"{R}/logs/tokenizer.log",
        benchmark:
            f"{R}/benchmarks/tokenizer.tsv"
        params:
            tokenforge=TOKENFORGE,
            args=cli_args(TOKENIZER_FLAGS),
            shards=dirname("input.stats"),
            outdir=dirname("output.weights"),
            seed=config["seed"],
            track=track(),
        threads: config["threads"]
        resources:
            mem_mb=4000,
            runtime=120,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} tokenizer --shards {params.shards} --out {params.outdir} {params.args} --seed {params.seed}"
            " --threads {threads} {params.track} > {log} 2>&1"
