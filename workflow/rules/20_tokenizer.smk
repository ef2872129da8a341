# Group "tokens": the tokenizer, tokens and synonyms, once per data and tokenizer settings.
# tokenizer.pretrained: a local diffusers VQModel folder used instead of training one (`tokenforge tokenizer
# --pretrained DIR`); the rule writes the same folder either way, so tokenize and synonyms do not know the difference.
# The flags the import reads; passing the training ones (epochs, lr, ...) would only rerun it when they change.
PRETRAINED_FLAGS = ("pretrained", "max_images", "prune", "device")
for _v in VARIANTS:
    _pretrained = _v.config["tokenizer"].get("pretrained")
    if not SEIT and _pretrained and not Path(_pretrained, "config.json").is_file():
        raise WorkflowError(
            ("" if not GRID else f"experiment variant {_v.name}: ")
            + f"config key tokenizer.pretrained: {_pretrained}: no config.json; expected a local diffusers VQModel "
            "folder written by save_pretrained"
        )


def tokenizer_flags(c):
    """The tokenizer section's keys that become `tokenforge tokenizer` flags: all of them to train, PRETRAINED_FLAGS
    to import."""
    pretrained = c["tokenizer"].get("pretrained")
    return cli_args({k: v for k, v in c["tokenizer"].items() if not pretrained or k in PRETRAINED_FLAGS})


def pretrained_vq(wildcards):
    pretrained = V("tokens", wildcards).config["tokenizer"].get("pretrained")
    return [f"{pretrained}/config.json"] if pretrained else []  # a new model there reruns it


if not SEIT:

    rule tokenizer:
        input:
            stats=at("tokens", "data", "shard/stats.json"),
            pretrained=pretrained_vq,
        output:
            weights=path("tokens", "tokenizer/model.safetensors"),
            config=path("tokens", "tokenizer/config.json"),
            codebook=path("tokens", "tokenizer/codebook.safetensors"),
            grid=report(
                path("tokens", "tokenizer/reconstructions.png"),
                caption="../report/reconstructions.rst",
                category="Tokenizer",
            ),
            stats=report(path("tokens", "tokenizer/stats.json"), caption="../report/tokenizer.rst", category="Tokenizer"),
        log:
            path("tokens", "logs/tokenizer.log"),
        benchmark:
            path("tokens", "benchmarks/tokenizer.tsv")
        params:
            tokenforge=TOKENFORGE,
            args=cfg("tokens", tokenizer_flags),
            shards=dirname("input.stats"),
            outdir=dirname("output.weights"),
            seed=cfg("tokens", data_seed),
            track=track("tokens"),
        threads: THREADS
        resources:
            mem_mb=4000,
            runtime=120,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} tokenizer --shards {params.shards} --out {params.outdir} {params.args} --seed {params.seed}"
            " --threads {threads} {params.track} > {log} 2>&1"
