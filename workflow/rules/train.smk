# One training rule per Job of lop.params.expand_jobs (docs/pipeline.md, "Training jobs").
#
# Outputs are exactly the job's run.json files (+ their metrics.parquet). The job's resolved config is a
# `params:` value, so Snakemake's params rerun-trigger reruns a job when, and only when, its own config
# changes. The resume checkpoint under <runs>/.checkpoints/ is not an output: Snakemake never deletes it,
# and a job killed mid-run resumes from it when it is run again (lop.runner).
#
# With from_cache=true no training rule exists at all: the runs must come from `dvc pull`.
# LOP_RUN_EXTRA_ARGS (environment, untracked) adds `lop run` options that do not change results, e.g.
# "--checkpoint-minutes 2" on a preemptible cluster.

if not FROM_CACHE:
    for _exp in EXPERIMENTS:
        for _job in JOBS[_exp]:

            rule:
                name:
                    rule_name("train", _exp, _job.job_id)
                input:
                    job_data(_exp, _job),
                    job_pretrained(_exp, _job),
                output:
                    job_outputs(_exp, _job),
                params:
                    config=job_fingerprint(_exp, _job),
                    args=train_command(_job),
                    out=lambda wc, output: str(Path(output[0]).parents[3]),  # <out>/<m>/<s>/seed-<n>/run.json
                log:
                    str(LOGS / _exp / SCALE / "train" / f"{_job.job_id}.log"),
                benchmark:
                    str(BENCH / _exp / SCALE / "train" / f"{_job.job_id}.tsv")
                conda:
                    "../envs/lop.yaml"
                threads: _job.resources["threads"]
                # larger jobs first (Snakemake runs higher priorities first when cores are short): on
                # the demo the packed SCR job (120 runs) is the longest, and started last it would
                # leave the other core idle for minutes at the end
                priority: len(_job.outputs)
                resources:
                    gpu=_job.resources["gpu"],
                    mem_mb=_job.resources["mem_mb"],
                    runtime=_job.resources["runtime"],
                shell:
                    "echo \"[pipeline] host=$(hostname) slurm_job_id=${{SLURM_JOB_ID:-none}} threads={threads}\" > {log}; "
                    "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
                    "lop run {params.args} --out {params.out} ${{LOP_RUN_EXTRA_ARGS:-}} >> {log} 2>&1"
