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


rule paper_comparison:
    """Ours vs the paper: every published value of the registry next to ours (docs/pipeline.md)."""
    input:
        agg=[aggregate_file(exp) for exp in EXPERIMENTS],
    output:
        md=report(
            comparison_files()[0],
            caption="../report/paper_comparison.rst",
            category="Ours vs the paper",
            labels={"table": "paper_comparison", "scale": SCALE},
        ),
        csv=comparison_files()[1],
    params:
        spec=figures_fingerprint(FIGURES),
        scale=SCALE,
        registry=str(REGISTRY_FILE),
    log:
        str(LOGS / "tables" / SCALE / "paper_comparison.log"),
    conda:
        "../envs/lop.yaml"
    shell:
        "lop compare --agg {input.agg} --registry {params.registry} --scale {params.scale} "
        "--md {output.md} --csv {output.csv} > {log} 2>&1"


if CL_EXPERIMENTS:

    rule cl_table:
        """Forgetting and plasticity metrics side by side for every task-sequence experiment (docs/pipeline.md)."""
        input:
            agg=[aggregate_file(exp) for exp in CL_EXPERIMENTS],
        output:
            md=report(
                cl_table_files()[0],
                caption="../report/cl_table.rst",
                category="Ours vs the paper",
                labels={"table": "cl_table", "scale": SCALE},
            ),
            csv=cl_table_files()[1],
        params:
            scale=SCALE,
        log:
            str(LOGS / "tables" / SCALE / "cl_table.log"),
        conda:
            "../envs/lop.yaml"
        shell:
            "lop cl-table --agg {input.agg} --scale {params.scale} --md {output.md} --csv {output.csv} > {log} 2>&1"


for _exp in EXPERIMENTS:

    rule:
        name:
            rule_name("summary", _exp)
        input:
            agg=aggregate_file(_exp),
        output:
            metrics=summary_files(_exp)[0],
            plots=summary_files(_exp)[1:],
        params:
            spec=figures_fingerprint(f for f, s in FIGURES.items() if s.experiment == _exp),
            scale=SCALE,
            registry=str(REGISTRY_FILE),
            experiment=_exp,
            plots=lambda wc, output: str(Path(output.metrics).parents[2] / "plots" / SCALE),  # <results>/plots
        log:
            str(LOGS / _exp / SCALE / "summary.log"),
        conda:
            "../envs/lop.yaml"
        shell:
            "lop summary --agg {input.agg} --experiment {params.experiment} --registry {params.registry} "
            "--scale {params.scale} --metrics {output.metrics} --plots-dir {params.plots} > {log} 2>&1"


if "budgeted_cl" in EXPERIMENTS:

    rule budget_table:
        """budgeted_cl: every method vs naive uniform replay at equal compute (lop.analysis.budgeted_table)."""
        input:
            agg=aggregate_file("budgeted_cl"),
        output:
            md=extra_tables("budgeted_cl")[0],
            csv=extra_tables("budgeted_cl")[1],
        params:
            scale=SCALE,
        log:
            str(LOGS / "tables" / SCALE / "budgeted_cl.log"),
        conda:
            "../envs/lop.yaml"
        shell:
            "lop budget-table --agg {input.agg} --scale {params.scale} --md {output.md} --csv {output.csv} > {log} 2>&1"
