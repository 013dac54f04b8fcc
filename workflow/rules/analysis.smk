# Aggregation (one table per experiment + scale) and figures (one rule per registry figure).
#
# A figure's `params: spec` is its registry entry + the shared style as canonical JSON: editing one
# figure's entry reruns only that figure; the registry file itself is not an input (its mtime would
# rerun every figure).


rule aggregate:
    input:
        lambda wc: run_files(wc.experiment),
    output:
        str(RESULTS / "agg" / "{experiment}-{scale}.parquet"),
    params:
        runs=lambda wc, input: str(Path(input[0]).parents[3]),  # <runs>/<m>/<s>/seed-<n>/run.json
        params_file=lambda wc: str(PARAMS[wc.experiment][0]),
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS) or "NO_EXPERIMENT",
        scale=SCALE,
    log:
        str(LOGS / "{experiment}" / "{scale}" / "aggregate.log"),
    conda:
        "../envs/lop.yaml"
    shell:
        "lop aggregate --runs {params.runs} --params {params.params_file} --scale {wildcards.scale} "
        "--out {output} > {log} 2>&1"


for _fid, _spec in FIGURES.items():

    rule:
        name:
            rule_name("figure", _fid)
        input:
            agg=aggregate_file(_spec.experiment),
        output:
            png=report(
                figure_files(_fid)[0],
                caption=f"../report/{_spec.caption or _fid + '.rst'}",
                category="Figures",
                subcategory=_spec.paper or _fid,
                labels={"figure": _spec.paper or _fid, "experiment": _spec.experiment, "scale": SCALE},
            ),
            pdf=figure_files(_fid)[1],
        params:
            spec=REGISTRY.fingerprint(_fid),
            scale=SCALE,
            registry=str(REGISTRY_FILE),
            figure=_fid,
        log:
            str(LOGS / "figures" / SCALE / f"{_fid}.log"),
        conda:
            "../envs/lop.yaml"
        shell:
            "lop figure build {params.figure} --agg {input.agg} --scale {params.scale} "
            "--registry {params.registry} --png {output.png} --pdf {output.pdf} > {log} 2>&1"
