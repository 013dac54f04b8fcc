"""Params files: an experiment's scales, method grids, seeds and resources, validated as data.

``params/<experiment>.yaml``::

    experiment: scr
    description: ...
    presets: presets/ppo.yaml # optional: a file of shared `methods:`, merged under this file's
    methods: {...}            # every method, defined once (as the paper scale runs it)
    resources: {...}          # default resources
    scales:
      smoke: {problem: {...}, seeds: [0, 1], seeds_per_job: 2, pack_settings: true,
              resources: {...},                  # resources here replace the defaults
              only: [bp, cbp],                   # optional: the subset of methods this scale runs
              patch: {cbp: {grid: {cbp.replacement_rate: [1.0e-3]}}}}  # optional per-method changes
      demo: ...
      paper: ...

A method is ``{base: {<MethodConfig keys>}, grid: {<dotted key>: [values...]}, problem: {...}}``; its
settings are the cartesian product of the grid lists. A patch is merged into the method recursively:
mappings merge key by key, any other value (a list, a number) replaces, and ``null`` deletes the key.
The presets file's methods are merged the same way under the file's own ``methods:``. `load_params`
validates everything (the problem against the experiment's dataclass, every grid point against
`MethodConfig` and against the keys the experiment supports) before any job is planned, from
`lop.experiments.schemas` alone: validating a params file imports no torch.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lop.config import (
    MethodConfig,
    check,
    fillable_methods,
    from_dict,
    packing_conflict,
    resets_units,
    set_dotted,
    to_dict,
)
from lop.errors import ConfigError
from lop.experiments.schemas import RunSpec, check_supported, get_schema
from lop.limits import (
    check_memory,
    check_run_count,
    check_sane_values,
    check_seed_range,
    check_seeds,
    grid_size,
    load_yaml,
    safe_component,
)

SCALES = ("smoke", "demo", "paper")
GPU_MEMORY_MB = 141 * 1024  # the largest GPU a job may get (memory pre-flight of GPU jobs)
_SAFE = re.compile(r"^[A-Za-z0-9_.=,+-]+$")


@dataclass(frozen=True)
class Resources:
    """What one training job needs; Snakemake maps these to local or cluster resources."""

    gpu: int = 0
    mem_mb: int = 2000
    runtime: int = 60
    threads: int = 1

    def validate(self) -> list[tuple[str, str]]:
        return (
            check(self.gpu >= 0, "gpu", "must be >= 0")
            + check(self.mem_mb > 0, "mem_mb", "must be > 0")
            + check(self.runtime > 0, "runtime", "minutes, must be > 0")
            + check(self.threads > 0, "threads", "must be > 0")
        )


@dataclass(frozen=True)
class MethodSpec:
    """A named method preset: `base` MethodConfig keys, `problem` overrides, and a grid whose keys are
    MethodConfig keys (dotted for nesting, ``cbp.replacement_rate``) or ``problem.<key>``."""

    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    problem: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedRange:
    start: int = 0
    count: int = 1


@dataclass(frozen=True)
class ScaleSpec:
    problem: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | SeedRange = field(default_factory=lambda: [0])
    seeds_per_job: int = 1
    pack_settings: bool = False
    # groups of methods whose settings train in one job (with pack_settings: per problem and seed chunk),
    # e.g. [[bp, l2, snp, cbp]]: one process instead of four, where a step's cost is mostly overhead
    pack_methods: list[list[str]] = field(default_factory=list)
    device: str = "auto"
    checkpoint_minutes: float = 10.0
    models_every: int = 0  # with `lop run --models-dir`: network snapshots every N units (0 = none)
    resources: Resources | None = None
    only: list[str] | None = None
    patch: dict[str, dict[str, Any]] = field(default_factory=dict)
    # files the scale needs that the pipeline cannot make (e.g. model weights a user downloads): while one
    # is missing the pipeline skips this experiment at this scale with one line (`missing_files`)
    needs_files: list[str] = field(default_factory=list)
    needs_files_help: str = ""  # how a user obtains them (the skip line quotes it)

    def pack_group_of(self) -> dict[str, list[str]]:
        """Each packed method's `pack_methods` group (methods not in a group are absent)."""
        return {m: g for g in self.pack_methods for m in g}


@dataclass(frozen=True)
class ParamsFile:
    experiment: str
    scales: dict[str, ScaleSpec]
    description: str = ""
    presets: str | None = None
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class Setting:
    method: str
    setting_id: str
    values: dict[str, Any]
    config: MethodConfig
    problem: Any


@dataclass(frozen=True)
class Job:
    """One training job: runs of one method that train in one process."""

    experiment: str
    scale: str
    method: str
    job_id: str
    setting_ids: list[str]
    seeds: list[int]
    resources: dict[str, int]
    outputs: list[str]
    cli_args: list[str]
    params_path: str


@dataclass
class Params:
    """A validated params file."""

    path: Path
    data: ParamsFile
    problems: dict[str, Any]
    settings: dict[str, dict[str, list[Setting]]]  # scale -> method -> settings
    sources: list[Path] = field(default_factory=list)  # the params file and its presets file

    @property
    def experiment(self) -> str:
        return self.data.experiment

    def scale(self, name: str) -> ScaleSpec:
        if name not in self.data.scales:
            raise ConfigError(
                f"{self.path}:scales", f"no scale {name!r}; defined: {', '.join(self.data.scales)}"
            )
        return self.data.scales[name]

    def seeds(self, scale: str) -> list[int]:
        s = self.scale(scale).seeds
        return list(range(s.start, s.start + s.count)) if isinstance(s, SeedRange) else list(s)

    def resources(self, scale: str) -> Resources:
        return self.scale(scale).resources or self.data.resources

    def method_settings(self, scale: str, method: str) -> list[Setting]:
        methods = self.settings[scale]
        if method not in methods:
            raise ConfigError(
                f"{self.path}:scales.{scale}.methods", f"no method {method!r}; defined: {', '.join(methods)}"
            )
        return methods[method]

    def job_settings(self, scale: str, method: str) -> dict[str, Setting]:
        """The settings a job's ``--method`` selects, by the ids its ``--setting-id`` uses: one method's
        settings by id, or for a `pack_methods` group (``a+b+c``) every member's by ``method/id``."""
        members = method.split(PACK_SEP)
        if len(members) == 1:
            return {s.setting_id: s for s in self.method_settings(scale, method)}
        groups = [PACK_SEP.join(g) for g in self.scale(scale).pack_methods]
        if method not in groups:
            raise ConfigError(
                f"{self.path}:scales.{scale}.pack_methods",
                f"no method group {method!r}; groups: {', '.join(groups) or 'none'}",
            )
        return {f"{m}/{s.setting_id}": s for m in members for s in self.method_settings(scale, m)}


PACK_SEP = "+"  # joins the methods of a pack_methods group in job ids and `lop run --method`


def format_value(v: Any) -> str:
    """Compact, stable text of a grid value for setting ids (0.01, 1e-05, true, sgd)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            repr(v)
            if (v == 0 or 1e-3 <= abs(v) < 1e4)
            else f"{v:.6g}".replace("e-0", "e-").replace("e+0", "e+")
        )
    return str(v)


def setting_id(values: Mapping[str, Any]) -> str:
    """``key=value,key=value`` in key order, or ``default`` for an empty grid."""
    if not values:
        return "default"
    return ",".join(f"{k}={format_value(values[k])}" for k in sorted(values))


def _expand_method(
    where: str, name: str, spec: MethodSpec, experiment: Any, scale_problem: dict[str, Any]
) -> list[Setting]:
    problem_cls = experiment.problem_cls
    for key, values in spec.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.grid.{key}", "must be a non-empty list of values")
    keys = list(spec.grid)
    out = []
    for combo in itertools.product(*(spec.grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        data: dict[str, Any] = dict(spec.base)
        prob: dict[str, Any] = {**scale_problem, **spec.problem}
        for k, v in values.items():
            if k.startswith("problem."):
                prob = set_dotted(prob, k.removeprefix("problem."), v)
            else:
                data = set_dotted(data, k, v)
        sid = setting_id(values)
        config = from_dict(MethodConfig, data, f"{where}[{sid}]")
        check_supported(experiment, config, where)
        problem = from_dict(problem_cls, prob, f"{where}[{sid}].problem")
        if not _SAFE.match(sid):
            raise ConfigError(f"{where}.grid", f"setting id {sid!r} is not filesystem-safe")
        safe_component(sid, f"{where}.grid", "setting id")
        out.append(Setting(name, sid, values, config, problem))
    ids = [s.setting_id for s in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}.grid", "grid produces duplicate settings")
    return out


def merge_patch(base: Any, patch: Any) -> Any:
    """`base` with `patch` merged in: mappings merge key by key (``None`` deletes), anything else replaces."""
    if not isinstance(base, Mapping) or not isinstance(patch, Mapping):
        return patch
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(base.get(key), value)
    return out


def _resolve_methods(path: Path, raw: Any) -> tuple[Any, list[Path]]:
    """Raw params data with presets merged and each scale's ``only``/``patch`` applied: returns the data
    with every scale's resolved ``methods`` (raw) under ``_methods`` and the files read."""
    sources = [path]
    if not isinstance(raw, Mapping):
        return raw, sources
    raw = dict(raw)
    methods = raw.get("methods") or {}
    if not isinstance(methods, Mapping):
        raise ConfigError(f"{path}:methods", "expected a mapping of method names to presets")
    preset = raw.get("presets")
    if preset is not None:
        if not isinstance(preset, str) or Path(preset).is_absolute() or ".." in Path(preset).parts:
            raise ConfigError(
                f"{path}:presets", "expected a path relative to the params folder, e.g. presets/ppo.yaml"
            )
        ppath = path.parent / preset
        if not ppath.is_file():
            raise ConfigError(
                f"{path}:presets",
                f"{ppath} not found; the presets path is relative to the params file's folder "
                "(copy params/presets/ along with the file)",
            )
        pdata = load_yaml(ppath, "presets file")
        if (
            not isinstance(pdata, Mapping)
            or set(pdata) != {"methods"}
            or not isinstance(pdata["methods"], Mapping)
        ):
            raise ConfigError(str(ppath), "a presets file holds exactly one key, methods: {name: preset}")
        sources.append(ppath)
        methods = merge_patch(dict(pdata["methods"]), methods)
    raw["methods"] = methods
    scales = raw.get("scales")
    if not isinstance(scales, Mapping):
        return raw, sources
    resolved = {}
    for name, sc in scales.items():
        sw = f"{path}:scales.{name}"
        if not isinstance(sc, Mapping):
            continue
        if "methods" in sc:
            raise ConfigError(
                f"{sw}.methods",
                "a scale does not redefine methods; define each once under the top-level methods: and "
                "choose them per scale with only: [names] and patch: {name: {changes}}",
            )
        only = sc.get("only")
        if only is None:
            names = list(methods)
        elif not isinstance(only, list) or not all(isinstance(n, str) for n in only):
            raise ConfigError(f"{sw}.only", "expected a list of method names")
        else:
            names = only
        for n in names:
            if n not in methods:
                raise ConfigError(f"{sw}.only", f"no method {n!r}; defined: {', '.join(methods)}")
        patch = sc.get("patch") or {}
        if not isinstance(patch, Mapping):
            raise ConfigError(f"{sw}.patch", "expected a mapping of method names to changes")
        for n, change in patch.items():
            if n not in names:
                raise ConfigError(
                    f"{sw}.patch.{n}", f"not a method of this scale; its methods: {', '.join(names)}"
                )
            if not isinstance(change, Mapping):
                raise ConfigError(
                    f"{sw}.patch.{n}", "expected a mapping of changes, e.g. {grid: {lr: [0.01]}}"
                )
        resolved[name] = {
            n: merge_patch(methods[n], patch.get(n)) if n in patch else methods[n] for n in names
        }
    raw["_methods"] = resolved
    return raw, sources


def load_params(path: str | Path) -> Params:
    """Read and validate a params file; raises `ConfigError` naming the file and key."""
    path = Path(path)
    raw = load_yaml(path, "params file")  # "params file not found" when missing
    check_sane_values(raw, f"{path}:")
    raw, sources = _resolve_methods(path, raw)
    scale_methods = raw.pop("_methods", {}) if isinstance(raw, dict) else {}
    where = f"{path}:"
    data = from_dict(ParamsFile, raw, where.rstrip(":") + ":")
    spec = get_experiment_checked(data.experiment, f"{path}:experiment")
    unknown = sorted(set(data.scales) - set(SCALES))
    if unknown:
        raise ConfigError(f"{path}:scales.{unknown[0]}", f"unknown scale; use {', '.join(SCALES)}")
    problems: dict[str, Any] = {}
    settings: dict[str, dict[str, list[Setting]]] = {}
    for scale_name, scale in data.scales.items():
        sw = f"{path}:scales.{scale_name}"
        problems[scale_name] = from_dict(spec.problem_cls, scale.problem, f"{sw}.problem")
        if isinstance(scale.seeds, SeedRange):
            check_seed_range(scale.seeds.start, scale.seeds.count, f"{sw}.seeds")
        else:
            check_seeds(scale.seeds, f"{sw}.seeds")
        seeds = (
            list(range(scale.seeds.start, scale.seeds.start + scale.seeds.count))
            if isinstance(scale.seeds, SeedRange)
            else list(scale.seeds)
        )
        if not seeds:
            raise ConfigError(f"{sw}.seeds", "empty seed list; give at least one seed")
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ConfigError(f"{sw}.seeds", "seeds must be distinct non-negative integers")
        if scale.seeds_per_job <= 0:
            raise ConfigError(f"{sw}.seeds_per_job", "must be > 0")
        if scale.models_every < 0:
            raise ConfigError(f"{sw}.models_every", "must be >= 0 (0 = no model snapshots)")
        if scale.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"{sw}.device", "must be auto, cpu or cuda")
        methods = scale_methods.get(scale_name, {})
        if not methods:
            raise ConfigError(f"{sw}.only", "no methods for this scale")
        settings[scale_name] = {}
        for mname in methods:
            safe_component(mname, f"{path}:methods.{str(mname)[:60]}", "method name")
        n_settings = sum(grid_size(_raw_grid(m), f"{path}:methods.{n}") for n, m in methods.items())
        check_run_count(n_settings, len(seeds), sw)
        for mname, mraw in methods.items():
            if not _SAFE.match(mname):
                raise ConfigError(
                    f"{path}:methods.{mname}", "method names may use letters, digits, _ . - only"
                )
            settings[scale_name][mname] = _expand_scale_method(
                path, sw, mname, mraw, scale.patch.get(mname), spec, scale.problem
            )
        _check_pack_methods(scale, settings[scale_name], sw, spec.fused_optimizer)
        _check_job_memory(scale, scale.resources or data.resources, settings[scale_name], len(seeds), sw)
    return Params(path, data, problems, settings, sources)


def _check_pack_methods(
    scale: ScaleSpec, methods: dict[str, list[Setting]], where: str, fused_optimizer: bool = False
) -> None:
    """`pack_methods`: groups of ≥ 2 of the scale's methods, each method in at most one group, whose
    settings can share a batch (`lop.config.packing_conflict`); needs ``pack_settings: true``. Where the
    experiment's learner fuses its optimiser (PPO), a group may not mix runs with and without a method
    that is filled with its neutral config and resets units (its config class's ``resets_units``: CBP):
    those runs would train with another kernel than alone (the method layer refuses the same batch)."""
    if not scale.pack_methods:
        return
    if not scale.pack_settings:
        raise ConfigError(f"{where}.pack_methods", "packs methods' settings into one job; set pack_settings: true")
    seen: set[str] = set()
    for g, group in enumerate(scale.pack_methods):
        gw = f"{where}.pack_methods[{g}]"
        if len(group) < 2:
            raise ConfigError(gw, "list at least two methods to pack together")
        for m in group:
            if m not in methods:
                raise ConfigError(gw, f"no method {m!r} at this scale; methods: {', '.join(methods)}")
            if m in seen:
                raise ConfigError(gw, f"method {m!r} is in two groups; put it in one")
            seen.add(m)
        settings = [s for m in group for s in methods[m]]
        if fused_optimizer:
            filled = set().union(*(fillable_methods(s.config) for s in settings))
            for key in sorted(k for k in filled if resets_units(k)):
                without = [s for s in settings if getattr(s.config, key) is None]
                if without:
                    raise ConfigError(
                        gw,
                        f"{without[0].method}/{without[0].setting_id} has no {key!r} while others in the group do; "
                        "this experiment's fused optimiser cannot train them in one batch: pack methods "
                        f"that all use {key!r} or none",
                    )
        conflict = packing_conflict([s.config for s in settings])
        if conflict is not None:
            a, b, key = conflict
            sa, sb = settings[a], settings[b]
            raise ConfigError(
                gw,
                f"{sa.method}/{sa.setting_id} and {sb.method}/{sb.setting_id} differ in {key!r} and cannot "
                "train in one batch; take one of them out of the group",
            )


def _raw_grid(method: Any) -> Mapping[str, Any]:
    """The grid mapping of a raw method preset ({} when absent or malformed: `from_dict` reports it)."""
    grid = method.get("grid") if isinstance(method, Mapping) else None
    return grid if isinstance(grid, Mapping) else {}


def _keys(tree: Any) -> set[str]:
    """Every key (and dotted grid key part) anywhere in a nested mapping."""
    if not isinstance(tree, Mapping):
        return set()
    out = set()
    for k, v in tree.items():
        out |= set(str(k).split(".")) | _keys(v)
    return out


def _expand_scale_method(
    path: Path, sw: str, name: str, raw: Any, patch: Any, experiment: Any, problem: dict[str, Any]
) -> list[Setting]:
    """A scale's settings of one method; errors point at the scale's patch when the bad key is in it,
    else at the method's definition under the top-level ``methods:``."""
    defined = f"{path}:methods.{name}"
    where = f"{sw}.patch.{name}" if patch else defined
    try:
        return _expand_method(where, name, from_dict(MethodSpec, raw, where), experiment, problem)
    except ConfigError as e:
        if patch and e.where.startswith(where):
            rest = e.where.removeprefix(where)  # ".redo", "[lr=0.01].lrr", ".grid.lr"
            key = rest.rsplit(".", 1)[-1]
            if key and key not in _keys(patch):
                raise ConfigError(defined + rest, str(e).removeprefix(f"{e.where}: ")) from None
        raise


def _check_job_memory(
    scale: ScaleSpec, res: Resources, methods: dict[str, list[Setting]], n_seeds: int, where: str
) -> None:
    """Pre-flight: the networks of one job must fit in its ``mem_mb`` (GPU jobs: in the largest GPU)."""
    runs_per_seed_chunk = min(scale.seeds_per_job, n_seeds)
    limit = res.mem_mb if res.gpu == 0 else max(res.mem_mb, GPU_MEMORY_MB)
    what = "the job's resources.mem_mb" if res.gpu == 0 else "one GPU"
    group_of = scale.pack_group_of()
    for mname, method_settings in methods.items():
        packed = len(method_settings) if scale.pack_settings else 1
        if mname in group_of:
            packed = sum(len(methods[m]) for m in group_of[mname])
        for s in method_settings:
            check_memory(s.problem, runs_per_seed_chunk * packed, limit, f"{where}.methods.{mname}", what)


def get_experiment_checked(name: str, where: str):
    """The experiment's schema (`lop.experiments.schemas`: problem dataclass and supported method keys,
    no torch); `ConfigError` at `where` naming the known experiments."""
    try:
        return get_schema(name)
    except ConfigError as e:
        raise ConfigError(where, str(e).split(": ", 1)[-1]) from None


def chunks(seq: list[int], size: int) -> list[list[int]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def expand_jobs(params: Params, scale: str) -> list[Job]:
    """The training jobs of one scale: per method, one job per seed chunk (all settings packed) or
    per (setting, seed chunk)."""
    sc = params.scale(scale)
    res = to_dict(params.resources(scale))
    seeds = params.seeds(scale)
    jobs = []
    for method, settings in _job_methods(params, scale):
        packed = PACK_SEP in method
        groups = _problem_groups(settings) if sc.pack_settings else [[s] for s in settings]
        for group in groups:
            for chunk in chunks(seeds, sc.seeds_per_job):
                label = group[0].setting_id if len(group) == 1 else f"{group[0].setting_id}+{len(group) - 1}"
                job_id = f"{method}--{label}--seeds-{chunk[0]}-{chunk[-1]}"
                ids = [f"{s.method}/{s.setting_id}" if packed else s.setting_id for s in group]
                outputs = [f"{s.method}/{s.setting_id}/seed-{seed}/run.json" for s in group for seed in chunk]
                cli = ["--method", method]
                for sid in ids:
                    cli += ["--setting-id", sid]
                cli += ["--seeds", ",".join(str(s) for s in chunk)]
                jobs.append(
                    Job(
                        params.experiment,
                        scale,
                        method,
                        job_id,
                        ids,
                        chunk,
                        res,
                        outputs,
                        cli,
                        str(params.path),
                    )
                )
    return jobs


def _job_methods(params: Params, scale: str) -> list[tuple[str, list[Setting]]]:
    """(``--method`` value, settings) per method, a `pack_methods` group as one entry (``a+b+c``, at the
    place of its first member, its members' settings in group order)."""
    methods = params.settings[scale]
    group_of = params.scale(scale).pack_group_of()
    out: list[tuple[str, list[Setting]]] = []
    done: set[str] = set()
    for method, settings in methods.items():
        group = group_of.get(method)
        if group is None:
            out.append((method, settings))
        elif PACK_SEP.join(group) not in done:
            done.add(PACK_SEP.join(group))
            out.append((PACK_SEP.join(group), [s for m in group for s in methods[m]]))
    return out


def _problem_groups(settings: list[Setting]) -> list[list[Setting]]:
    """Settings grouped by identical problem (only those can train in one batch), in file order."""
    groups: dict[str, list[Setting]] = {}
    for s in settings:
        groups.setdefault(repr(to_dict(s.problem)), []).append(s)
    return list(groups.values())


def select_runs(
    params: Params, scale: str, method: str, setting_ids: list[str] | None, seeds: list[int]
) -> tuple[Any, list[RunSpec]]:
    """(problem, RunSpecs) for the CLI's selection (all settings of the method when `setting_ids` is
    empty); the selected settings must share one problem."""
    by_id = params.job_settings(scale, method)
    chosen = list(by_id.values()) if not setting_ids else []
    for sid in setting_ids or []:
        if sid not in by_id:
            raise ConfigError(
                f"{params.path}:scales.{scale}.methods.{method}",
                f"no setting {sid!r}; settings are: {', '.join(by_id)}",
            )
        chosen.append(by_id[sid])
    if len(set(map(id, chosen))) != len(chosen):
        raise ConfigError("--setting-id", "a setting is selected twice; give each setting once")
    if not seeds:
        raise ConfigError("--seeds", "empty seed list; give at least one seed, e.g. --seeds 0,1,2")
    if len(_problem_groups(chosen)) != 1:
        raise ConfigError(
            "--setting-id", "the selected settings differ in problem settings; run them as separate jobs"
        )
    runs = [RunSpec(s.method, s.setting_id, s.values, s.config, seed) for s in chosen for seed in seeds]
    return chosen[0].problem, runs


def missing_files(params: Params, scale: str, root: str | Path = ".") -> list[str]:
    """The scale's `ScaleSpec.needs_files` that do not exist (relative paths are taken from `root`)."""
    return [f for f in params.scale(scale).needs_files if not (Path(root) / f).is_file()]


def skip_line(params: Params, scale: str, missing: list[str]) -> str:
    """One line saying why an experiment is skipped at a scale and how to enable it."""
    how = params.scale(scale).needs_files_help or "put the file(s) there"
    return (
        f"[lop] scale {scale}: skipping experiment {params.experiment}: {', '.join(missing)} not found; "
        f"to enable it: {how}"
    )


def list_param_files(folder: str | Path = "params") -> list[Path]:
    """Experiment params files in `folder` (everything but figures.yaml)."""
    return sorted(p for p in Path(folder).glob("*.yaml") if p.name != "figures.yaml")


def n_runs(params: Params, scale: str) -> int:
    return len(params.seeds(scale)) * sum(len(v) for v in params.settings[scale].values())


__all__ = [
    "SCALES",
    "Job",
    "Params",
    "Resources",
    "expand_jobs",
    "list_param_files",
    "load_params",
    "missing_files",
    "n_runs",
    "select_runs",
    "setting_id",
    "skip_line",
]
