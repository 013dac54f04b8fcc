"""What the pipeline plans from the params files: the data a job reads and what its results depend on
(used by the Snakemake rules and by workflow/scripts/dvc_pipeline.py; no Snakemake or DVC imports here)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lop.config import to_dict

PREPARED = "data/prepared/"


def problem_data_dirs(problem: Any) -> list[str]:
    """Prepared-data folders a problem reads: each value under data/prepared/, except where the problem
    names another ``dataset`` (``dataset: digits``, embedded, leaves ``data_dir`` unused; a ``<dataset>-standin``
    folder is that dataset's stand-in)."""
    values = to_dict(problem)
    dataset = values.get("dataset")
    found = set()
    for value in values.values():
        if isinstance(value, str) and value.startswith(PREPARED):
            folder = value.rstrip("/")
            if dataset is None or Path(folder).name.removesuffix("-standin") == dataset:
                found.add(folder)
    return sorted(found)


def problem_pretrained(problem: Any) -> list[str]:
    """Pretrained-network checkpoints a problem reads (its ``pretrained`` field, when set): built by
    `lop pretrain` in the pipeline before the job runs."""
    path = getattr(problem, "pretrained", "")
    return [path] if isinstance(path, str) and path else []


def pretrained_problems(params: Any, scale: str) -> dict[str, Any]:
    """Each pretrained checkpoint of a scale -> the problem that builds it; settings that name one file
    must agree on what it depends on (`pretrain_fingerprint`)."""
    from lop.errors import ConfigError

    out: dict[str, Any] = {}
    for settings in params.settings[scale].values():
        for s in settings:
            for path in problem_pretrained(s.problem):
                if path in out and _pretrain_key(out[path]) != _pretrain_key(s.problem):
                    raise ConfigError(
                        f"{params.path}:scales.{scale}.problem.pretrained",
                        f"{path} is named by settings that pretrain differently; give them different files",
                    )
                out.setdefault(path, s.problem)
    return out


def _pretrain_key(problem: Any) -> str:
    from lop.experiments.budgeted_cl import pretrain_fingerprint

    return pretrain_fingerprint(problem)


def job_pretrained(params: Any, scale: str, job: Any) -> list[str]:
    """Pretrained checkpoints one job of `lop.params.expand_jobs` reads."""
    return sorted({p for s in job_settings(params, scale, job) for p in problem_pretrained(s.problem)})


def job_settings(params: Any, scale: str, job: Any) -> list[Any]:
    """The `lop.params.Setting`s (resolved method config + problem) of one job of `expand_jobs`."""
    by_id = params.job_settings(scale, job.method)
    return [by_id[sid] for sid in job.setting_ids]


def job_data_dirs(params: Any, scale: str, job: Any) -> list[str]:
    """Prepared-data folders of one job of `lop.params.expand_jobs`."""
    return sorted({d for s in job_settings(params, scale, job) for d in problem_data_dirs(s.problem)})


def experiment_data_dirs(params: Any, scale: str) -> list[str]:
    """Prepared-data folders of every job of an experiment at one scale."""
    return sorted(
        {
            d
            for settings in params.settings[scale].values()
            for s in settings
            for d in problem_data_dirs(s.problem)
        }
    )


def job_fingerprint(params: Any, scale: str, job: Any) -> str:
    """What a job's results depend on, as canonical JSON (Snakemake's `params` rerun trigger).

    The job itself (method, settings, seeds, command line) and each of its settings' fully resolved
    method config and problem, never another method's: editing one method's grid reruns only that
    method's jobs. Resources are left out (more memory does not change a result).
    """
    desc = {k: v for k, v in asdict(job).items() if k != "resources"}
    desc["settings"] = {
        s.setting_id: {"values": s.values, "config": to_dict(s.config), "problem": to_dict(s.problem)}
        for s in job_settings(params, scale, job)
    }
    return json.dumps(desc, sort_keys=True, default=str)


def task_sequence_experiments(names: list[str]) -> list[str]:
    """The experiments among ``names`` whose trainer is a task sequence (`lop.problems.cl_tasks`): the
    inputs of the forgetting-and-plasticity table (`lop.analysis.cl_table`)."""
    from lop.experiments.base import get_experiment
    from lop.problems.cl_tasks import TaskSequenceTrainer

    out = []
    for name in names:
        build = get_experiment(name).build
        if isinstance(build, type) and issubclass(build, TaskSequenceTrainer):
            out.append(name)
    return out
