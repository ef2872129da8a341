# The blind control of a VQA or captioning run (multimodal.blind_control): the same BLIP given no image units (train
# --blind), trained once on every task's data (memory.method joint at the last task, no previous model: the standard
# question-only baseline), then evaluated on every task. `tokenforge package --controls blind=...` puts its scores
# beside the image model's, and `tokenforge summary` shows them: a task the image model answers no better than this
# model is answered from the question's priors, not the scene. Its own folder, control/blind/, outside the sequence.
rule control:
    input:
        tokens=at("run", "tokens", "tokens/train.parquet"),
        test=at("run", "tokens", "tokens/test.parquet"),
        shards=shard_stats("run"),
        codebook=at("run", "tokens", f"{TOKENIZER_REL}/codebook.safetensors"),
        split=at("run", "split", "split/tasks.json"),
        deepspeed=cfg("run", lambda c: c["train"]["deepspeed_config"]),
        synonyms=at("run", *SYNONYMS_AT),
    output:
        model=path("run", "control/blind/model.safetensors"),
        evaluation=path("run", "control/blind/evaluate.json"),
    log:
        path("run", "logs/control/blind.log"),
    benchmark:
        path("run", "benchmarks/control/blind.tsv")
    params:
        launch=lambda w, resources: train_launch(resources),
        tokenforge=TOKENFORGE,
        args=control_args,
        evaluate=section_args("run", "evaluate"),
        family=cfg("run", family_evaluate_flags),
        last=cfg("run", lambda c: c["split"]["tasks"] - 1),
        tokenizer=dirname("input.codebook"),
        shards=shards_flag("run"),
        split=dirname("input.split"),
        outdir=dirname("output.model"),
        seed=cfg("run", lambda c: c["seed"]),
        threads=lambda w, threads, resources: max(1, threads // train_processes(resources)),
        track=track("run", "--tag control=blind"),
    threads: THREADS
    resources:
        **TRAIN_RESOURCES,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.launch} train --tokens {input.tokens} {params.shards} --tokenizer {params.tokenizer} --split {params.split}"
        " --task {params.last} --out {params.outdir} {params.args}"
        " --synonyms {input.synonyms} --seed {params.seed} --threads {params.threads} {params.track} > {log} 2>&1"
        " && {params.tokenforge} evaluate --model {params.outdir} --tokens {input.test} {params.shards} --split {params.split}"
        " --task {params.last} {params.family} --out {output.evaluation} {params.evaluate} {params.track} >> {log} 2>&1"
