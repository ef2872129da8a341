rule package:
    input:
        unpack(package_inputs),
    output:
        metrics=path("run", "package/metrics.json"),
        matrix=report(path("run", "package/accuracy_matrix.png"), caption="../report/accuracy_matrix.rst", category="Results"),
        curve=report(path("run", "package/average_accuracy.png"), caption="../report/average_accuracy.rst", category="Results"),
        html=path("run", "package/report.html"),
        archive=path("run", "tokenforge-results.tar.gz"),
    log:
        path("run", "logs/package.log"),
    benchmark:
        path("run", "benchmarks/package.tsv")
    params:
        tokenforge=TOKENFORGE,
        stats=lambda w: " ".join(f"{name}={p}" for name, p in stage_stats(V("run", w)).items()),
        outdir=dirname("output.metrics"),
        config=lambda w: f"{RESULTS}/{w.run}/config.resolved.yaml",
        title=lambda w: f"tokenforge run '{BASE['run']}'" + (f", variant '{V('run', w).name}'" if GRID else ""),
        images=lambda w, input: f"--images reconstructions={input.images}" if input.images else "",
        controls=lambda w, input: f"--controls blind={input.controls}" if input.controls else "",
        track=track("run"),
        registered=BASE["mlflow"]["registered_model"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/tokenforge.yaml"
    shell:
        "{params.tokenforge} package --evaluations {input.evaluations} --stats {params.stats} --model {input.model}"
        " --config {params.config} --out {params.outdir} --archive {output.archive} --title {params.title:q}"
        " {params.images} {params.controls} --registered-model {params.registered:q}"
        " {params.track} > {log} 2>&1"


# An experiment of several variants: one table, one plot and one report comparing them (tokenforge compare).
COMPARISON = [f"{E}/comparison.{ext}" for ext in ("csv", "md", "json")] + [f"{E}/accuracy_vs_bytes.png", f"{E}/report.html"]

if GRID:

    rule compare:
        input:
            metrics=[f"{RESULTS}/{v.roots['run']}/package/metrics.json" for v in VARIANTS],
        output:
            table=COMPARISON[0],
            markdown=COMPARISON[1],
            summary=COMPARISON[2],
            plot=report(COMPARISON[3], caption="../report/comparison.rst", category="Comparison"),
            html=COMPARISON[4],
        log:
            f"{E}/logs/compare.log",
        params:
            tokenforge=TOKENFORGE,
            folder=E,
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        conda:
            "../../envs/tokenforge.yaml"
        shell:
            "{params.tokenforge} compare {params.folder} --out {params.folder} -q > {log} 2>&1"
