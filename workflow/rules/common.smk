# Shared state of the pipeline, computed once at parse time (docs/pipeline.md).
#
# Every params file is loaded and validated here, before any job is scheduled: a bad file stops the
# pipeline with the file and key in the message. Jobs come from lop.params.expand_jobs; figures from the
# registry params/figures.yaml, keeping only those whose experiment has a params file with this scale.

import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from lop.analysis.registry import load_registry
from lop.errors import LopError
from lop.params import expand_jobs, list_param_files, load_params, missing_files, skip_line
from lop.plan import (
    job_data_dirs,
    job_fingerprint as plan_fingerprint,
    job_pretrained as plan_pretrained,
    pretrained_problems,
    problem_data_dirs,
    task_sequence_experiments,
)
from lop.workflow_config import check_pipeline_config, config_flag, resolve_experiments


# The config: config/config.yaml (every key and its default) + --config/--configfile overrides, checked
# against workflow/schemas/config.schema.yaml before anything is planned. An unknown key or a bad value
# stops here with one message naming the key and the allowed values (lop.workflow_config).
configfile: "config/config.yaml"


CONFIG_SCHEMA = Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parent / "schemas" / "config.schema.yaml"
try:
    # the schema (keys, types, allowed values: workflow/schemas), then what it cannot express (lop.limits:
    # plain paths, safe experiment names, a device that exists here)
    check_pipeline_config(config, CONFIG_SCHEMA)
except LopError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None
validate(config, "../schemas/config.schema.yaml")  # Snakemake's own check; fills in schema defaults


SCALE = str(config["scale"])
FROM_CACHE = config_flag(config["from_cache"])
DEVICE = config["device"]  # None: each scale's `device` from its params file
PARAMS_DIR = Path(config["params_dir"])
REGISTRY_FILE = Path(config["figures"] or str(PARAMS_DIR / "figures.yaml"))
RESULTS = Path(config["results"])
# Restrict the run to some experiments (every params file is still validated): experiments=scr,permuted_mnist,
# or a group of config `experiment_groups` (paper: the default; cl), or `all` (lop.workflow_config).
EXPERIMENTS_ARG = config["experiments"]
RUNS = RESULTS / "runs"
LOGS = RESULTS / "logs"
BENCH = RESULTS / "benchmarks"


def _load():
    """(params by experiment, jobs by experiment, registry); a LopError becomes one clear WorkflowError."""
    params, jobs = {}, {}
    try:
        for path in list_param_files(PARAMS_DIR):
            p = load_params(path)
            if p.experiment in params:
                raise WorkflowError(f"{path}: experiment {p.experiment!r} also defined in {params[p.experiment][0]}")
            params[p.experiment] = (Path(path), p)
        ONLY, notes = resolve_experiments(EXPERIMENTS_ARG, config["experiment_groups"], set(params))
        for line in notes:
            print(line, file=sys.stderr)
        for exp, (path, p) in params.items():
            if SCALE in p.data.scales and (ONLY is None or exp in ONLY):
                missing = missing_files(p, SCALE)
                if missing:  # e.g. model weights a user must download: skip with one line, never fail
                    print(skip_line(p, SCALE, missing), file=sys.stderr)
                    continue
                jobs[exp] = expand_jobs(p, SCALE)
        registry = load_registry(REGISTRY_FILE)
    except LopError as e:
        raise WorkflowError(f"invalid configuration: {e}") from None
    return params, jobs, registry


PARAMS, JOBS, REGISTRY = _load()
EXPERIMENTS = sorted(JOBS)
FIGURES = REGISTRY.for_experiments(EXPERIMENTS)
_skipped = sorted(set(REGISTRY.figures) - set(FIGURES))
if _skipped:
    print(
        f"[lop] scale {SCALE}: skipping figure(s) {', '.join(_skipped)} (their experiment has no params file "
        f"with this scale, is skipped for missing files, or is not in --config experiments)",
        file=sys.stderr,
    )


def runs_dir(experiment: str) -> Path:
    return RUNS / experiment / SCALE


def job_outputs(experiment: str, job) -> list[str]:
    """A job's run.json files (the contract) and their metrics.parquet siblings."""
    base = runs_dir(experiment)
    out = []
    for rel in job.outputs:
        run_json = base / rel
        out += [str(run_json), str(run_json.with_name("metrics.parquet"))]
    return out


def run_files(experiment: str) -> list[str]:
    """Every run.json of an experiment at this scale (the aggregate's inputs)."""
    return [str(runs_dir(experiment) / rel) for job in JOBS[experiment] for rel in job.outputs]


def job_fingerprint(experiment: str, job) -> str:
    """What a job's results depend on (lop.plan.job_fingerprint): Snakemake's `params` rerun trigger."""
    return plan_fingerprint(PARAMS[experiment][1], SCALE, job)


def job_data(experiment: str, job) -> list[str]:
    """The prepared-data folders a job reads (lop.plan), so Snakemake prepares them first."""
    return job_data_dirs(PARAMS[experiment][1], SCALE, job)


def job_pretrained(experiment: str, job) -> list[str]:
    """The pretrained-network checkpoints a job reads (lop.plan), so the pretrain rule builds them first."""
    return plan_pretrained(PARAMS[experiment][1], SCALE, job)


def _pretrained():
    """checkpoint path -> (params file, pretraining fingerprint, prepared-data folders it reads) over the
    scheduled experiments."""
    from lop.experiments.budgeted_cl import pretrain_fingerprint

    out = {}
    try:
        for exp in EXPERIMENTS:
            path, p = PARAMS[exp]
            for ckpt, problem in pretrained_problems(p, SCALE).items():
                out[ckpt] = (str(path), pretrain_fingerprint(problem), problem_data_dirs(problem))
    except LopError as e:
        raise WorkflowError(f"invalid configuration: {e}") from None
    return out


def train_command(job) -> str:
    """`lop run` arguments of a job (the params file's device unless --config device=... is given)."""
    args = ["--params", job.params_path, "--scale", job.scale, *job.cli_args]
    args += ["--models-dir", str(RESULTS / "models" / job.experiment / job.scale)]  # snapshots if the scale asks
    if DEVICE:
        args += ["--device", DEVICE]
    return shlex.join(args)


def rule_name(*parts: str) -> str:
    return "__".join("".join(c if c.isalnum() else "_" for c in p) for p in parts)


def figure_files(figure_id: str) -> list[str]:
    base = RESULTS / "figures" / SCALE
    return [str(base / f"{figure_id}.png"), str(base / f"{figure_id}.pdf")]


def aggregate_file(experiment: str) -> str:
    return str(RESULTS / "agg" / f"{experiment}-{SCALE}.parquet")


def comparison_files() -> list[str]:
    """Ours vs the paper: results/tables/<scale>/paper_comparison.{md,csv} (lop compare)."""
    base = RESULTS / "tables" / SCALE
    return [str(base / "paper_comparison.md"), str(base / "paper_comparison.csv")]


def extra_tables(experiment: str) -> list[str]:
    """An experiment's own summary table (results/tables/<scale>/<experiment>.{md,csv}); budgeted_cl only."""
    if experiment != "budgeted_cl":
        return []
    base = RESULTS / "tables" / SCALE
    return [str(base / f"{experiment}.md"), str(base / f"{experiment}.csv")]


CL_EXPERIMENTS = task_sequence_experiments(EXPERIMENTS)


def cl_table_files() -> list[str]:
    """Forgetting and plasticity side by side: results/tables/<scale>/cl_table.{md,csv} (lop cl-table), when
    this scale has task-sequence experiments."""
    base = RESULTS / "tables" / SCALE
    return [str(base / "cl_table.md"), str(base / "cl_table.csv")] if CL_EXPERIMENTS else []


def summary_files(experiment: str) -> list[str]:
    """An experiment's DVC metrics JSON, then one plot CSV per figure of it (lop summary)."""
    figs = sorted(fid for fid, spec in FIGURES.items() if spec.experiment == experiment)
    return [str(RESULTS / "metrics" / SCALE / f"{experiment}.json")] + [
        str(RESULTS / "plots" / SCALE / f"{fid}.csv") for fid in figs
    ]


def figures_fingerprint(figure_ids) -> str:
    """The registry entries (+ style) of some figures: what a table or summary drawn from them depends on."""
    return json.dumps([json.loads(REGISTRY.fingerprint(fid)) for fid in sorted(figure_ids)], sort_keys=True)


PRETRAINED = _pretrained()


if FROM_CACHE:
    # Cached results: the runs come from `dvc pull`, never from training (docs/cached-results.md).
    _missing = [f for exp in EXPERIMENTS for f in run_files(exp) if not Path(f).is_file()]
    if _missing:
        raise WorkflowError(
            f"from_cache: {len(_missing)} run(s) of scale {SCALE} are not here, e.g. {_missing[0]}; "
            "fetch them with `dvc pull` (or run without from_cache=true to train them)"
        )
