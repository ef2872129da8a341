# What the stages pass their CLI, from each variant's config (kept apart from the rules, as `snakemake --lint` wants).

# tokenizer.pretrained: a local diffusers VQModel folder used instead of training one (`tokenforge tokenizer
# --pretrained DIR`); the rule writes the same folder either way, so tokenize and synonyms do not know the difference.
# The flags the import reads; passing the training ones (epochs, lr, ...) would only rerun it when they change.
PRETRAINED_FLAGS = ("pretrained", "max_images", "prune", "device")
for _v in VARIANTS:
    _pretrained = _v.config["tokenizer"].get("pretrained")
    if not SEIT and _pretrained and not Path(_pretrained, "config.json").is_file():
        _where = f"experiment variant {_v.name}: " if GRID else ""
        raise WorkflowError(
            f"{_where}config key tokenizer.pretrained: {_pretrained}: no config.json; expected a local diffusers VQModel "
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


def pretrain_args(c):
    # the architecture is train's: task 0 inherits the pretrained model's
    pretrain = c.get("pretrain") or {}
    args = cli_args({k: v for k, v in pretrain.items() if k not in ("init", "timm_kwargs")})
    if pretrain.get("timm_kwargs"):
        args += f" --timm-kwargs {shlex.quote(json.dumps(pretrain['timm_kwargs']))}"
    arch = cli_args({k: c["train"][k] for k in ("input", "embed_dim", "depth", "num_heads", "mlp_ratio")})
    return f"{args} {arch}"


def timm_checkpoint(wildcards):
    timm = (V("pretrain", wildcards).config.get("pretrain") or {}).get("timm_checkpoint")
    return [timm] if timm else []


TRAIN_FLAG_SKIP = (*LAUNCH_KEYS, "token_expansion", "prompts", "model_options")


def train_settings(c, checkpoints):
    """The variant's `tokenforge train` flags from its config (the launch keys are resources, not flags)."""
    memory = cli_args({**c["memory"], "budget": c["memory"]["budget"] or "none"}, prefix="memory-")  # null: no limit
    return " ".join(
        [
            cli_args({k: v for k, v in c["train"].items() if k not in TRAIN_FLAG_SKIP}),
            memory,
            f"--checkpoint-dir {checkpoints}",
            cli_args(c["augment"], prefix="augment-"),
            cli_args(c["train"].get("token_expansion", {}), prefix="toe-"),
            cli_args(c["train"].get("prompts", {}), prefix="prompt-"),
            model_option_flags(c),
        ]
    )


def train_args(wildcards):
    v = V("run", wildcards)
    settings = train_settings(v.config, f"{RESULTS}/{wildcards.run}/checkpoints/train/task-{wildcards.task}")
    flags = (family_train_flags(v.config), previous_flag(wildcards), pretrain_flags(wildcards), tokenadapt_flag(wildcards))
    return f"{' '.join(flags)} {settings}"


def blind_control(c):
    return MULTIMODAL and bool((c.get("multimodal") or {}).get("blind_control"))


def control_args(wildcards):
    """The blind control's `tokenforge train` flags (65_control.smk): the run's train settings and text model given
    no image units (--blind), trained on every task's data at once (joint at the last task, no previous model); no
    pretrained vision start and no prompts, as it reads no image."""
    c = V("run", wildcards).config
    c = {**c, "memory": {**c["memory"], "method": "joint"}, "multimodal": {**c["multimodal"], "blind": True},
         "train": {k: v for k, v in c["train"].items() if k != "prompts"}}  # fmt: skip
    return f"{family_train_flags(c)} {train_settings(c, f'{RESULTS}/{wildcards.run}/checkpoints/control/blind')}"


def stage_stats(v):
    """name -> stats file of every stage behind a variant (its shared stages' and its own)."""
    c, roots, n = v.config, {g: f"{RESULTS}/{r}" for g, r in v.roots.items()}, v.config["split"]["tasks"]
    return {
        **({} if SEIT else {"shard": f"{roots['data']}/shard/stats.json", "tokenizer": f"{roots['tokens']}/tokenizer/stats.json"}),
        "tokenize": f"{roots['tokens']}/tokens/stats.json",
        **({"tokenadapt": f"{roots['tokenadapt']}/tokenadapt/stats.json"} if tokenadapt_on(c) else {}),
        **({"pretrain": f"{roots['pretrain']}/pretrain/stats.json"} if pretrain_mode(c) != "none" else {}),
        **{f"train-{t}": f"{roots['run']}/train/task-{t}/stats.json" for t in range(n)},
        **{f"evaluate-{t}": f"{roots['run']}/evaluate/task-{t}.json" for t in range(n)},
    }


def package_inputs(wildcards):
    v = V("run", wildcards)
    root, last = f"{RESULTS}/{v.roots['run']}", v.config["split"]["tasks"] - 1
    return dict(
        evaluations=[f"{root}/evaluate/task-{t}.json" for t in range(last + 1)],
        stats=list(stage_stats(v).values()),
        synonyms=f"{RESULTS}/{v.roots[SYNONYMS_AT[0]]}/{SYNONYMS_AT[1]}",
        model=f"{root}/train/task-{last}/model.safetensors",
        images=[] if SEIT else f"{RESULTS}/{v.roots['tokens']}/tokenizer/reconstructions.png",
        controls=[f"{root}/control/blind/evaluate.json"] if blind_control(v.config) else [],
    )



