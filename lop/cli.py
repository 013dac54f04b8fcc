"""The `lop` command line: `lop run`, `lop params`, `lop experiments`, and the data/analysis groups."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

from lop.allocator import keep_freed_memory
from lop.errors import ConfigError, LopError
from lop.limits import load_yaml, set_max_runs


def _seeds(text: str) -> list[int]:
    """'0,1,2' or '0-9' or '0-4,7' -> distinct seeds in [0, 2**63), counted before ranges expand."""
    from lop.limits import parse_seeds

    return parse_seeds(text, "--seeds")


def _check_run_args(args: argparse.Namespace) -> None:
    """Type and range checks of `lop run`'s numeric and path arguments, before anything is loaded."""
    from lop.limits import check_out_dir

    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise ConfigError("--checkpoint-every", f"must be >= 1 unit, got {args.checkpoint_every}")
    cm = args.checkpoint_minutes
    if cm is not None and not (math.isfinite(cm) and cm > 0):
        raise ConfigError("--checkpoint-minutes", f"must be a finite number > 0, got {cm}")
    if args.models_every is not None and args.models_every < 1:
        raise ConfigError("--models-every", f"must be >= 1 unit, got {args.models_every}")
    if args.threads is not None and not 0 < args.threads <= 1024:
        raise ConfigError("--threads", f"must be within 1..1024, got {args.threads}")
    check_out_dir(args.out, "--out")
    if args.models_dir:
        check_out_dir(args.models_dir, "--models-dir")


def _set_max_runs(args: argparse.Namespace) -> None:
    """``--max-runs N`` overrides the cap on runs per scale (`lop.limits.max_runs`)."""
    value = getattr(args, "max_runs", None)
    if value is not None:
        if value <= 0:
            raise ConfigError("--max-runs", f"must be > 0, got {value}")
        set_max_runs(value)


def cmd_run(args: argparse.Namespace) -> int:
    from lop.experiments.base import RunSpec
    from lop.limits import check_device
    from lop.runner import resolve_device, run_group

    _check_run_args(args)
    _set_max_runs(args)
    if args.device is not None:
        check_device(args.device, "--device")
    if args.run_file:
        runs, spec, problem, scale = _runs_from_run_file(Path(args.run_file), args.seeds)
        device_name = args.device or "auto"
        ckpt_minutes = 10.0
        models_every = 1
    else:
        from lop.params import load_params, select_runs

        path = Path(args.params) if args.params else Path("params") / f"{args.experiment}.yaml"
        if not args.params and not args.experiment:
            raise ConfigError("lop run", "give --params FILE, --experiment NAME or --run-file FILE")
        params = load_params(path)
        from lop.experiments.base import get_experiment

        spec = get_experiment(params.experiment)
        scale = args.scale
        sc = params.scale(scale)
        if not args.method:
            raise ConfigError("--method", f"choose one of: {', '.join(params.settings[scale])}")
        seeds = _seeds(args.seeds) if args.seeds is not None else params.seeds(scale)
        problem, runs = select_runs(params, scale, args.method, args.setting_id, seeds)
        from lop.limits import check_memory, machine_memory_mb

        check_memory(
            problem, len(runs), machine_memory_mb(), f"{path}:scales.{scale}", "this machine's memory"
        )
        device_name = args.device or sc.device
        ckpt_minutes = sc.checkpoint_minutes
        models_every = sc.models_every
    assert all(isinstance(r, RunSpec) for r in runs)
    keep_freed_memory()
    if args.threads is not None:
        if args.threads <= 0:
            raise ConfigError("--threads", "must be > 0")
        import torch

        torch.set_num_threads(args.threads)
    device_where = "--device" if args.device else f"{args.run_file or args.params}:device"
    device = resolve_device(check_device(device_name, device_where))
    out = Path(args.out)
    run_group(
        spec,
        problem,
        runs,
        out,
        scale=scale,
        device=device,
        checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes if args.checkpoint_minutes is not None else ckpt_minutes,
        progress=args.progress,
        models_dir=Path(args.models_dir) if args.models_dir else None,
        models_every=args.models_every if args.models_every is not None else models_every,
    )
    return 0


def _runs_from_run_file(path: Path, seeds_arg: str | None):
    """A run file: {experiment, scale?, problem: {...}, method: name, config: {MethodConfig}, seeds: [...]}."""
    from lop.config import MethodConfig, from_dict
    from lop.experiments.base import RunSpec, check_supported, get_experiment
    from lop.limits import (
        check_memory,
        check_sane_values,
        check_seeds,
        machine_memory_mb,
        safe_component,
    )
    from lop.params import setting_id

    raw = load_yaml(path, "run file")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "expected a mapping")
    allowed = {"experiment", "scale", "problem", "method", "config", "seeds"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{path}:{key}", f"unknown key; known keys are: {', '.join(sorted(allowed))}")
    if "experiment" not in raw:
        raise ConfigError(f"{path}:experiment", "missing")
    check_sane_values(raw, f"{path}:")
    if not isinstance(raw["experiment"], str):
        raise ConfigError(f"{path}:experiment", f"expected an experiment name, got {raw['experiment']!r}")
    try:
        spec = get_experiment(raw["experiment"])
    except ConfigError as e:
        raise ConfigError(f"{path}:experiment", str(e).split(": ", 1)[-1]) from None
    problem = from_dict(spec.problem_cls, raw.get("problem", {}), f"{path}:problem")
    cfg = from_dict(MethodConfig, raw.get("config", {}), f"{path}:config")
    check_supported(spec, cfg, f"{path}:config")
    if seeds_arg is not None:
        seeds = _seeds(seeds_arg)
    else:
        seeds = check_seeds(raw.get("seeds", [0]), f"{path}:seeds")
    method = safe_component(raw.get("method", "custom"), f"{path}:method", "method name")
    scale = safe_component(raw.get("scale", "custom"), f"{path}:scale", "scale name")
    check_memory(problem, len(seeds), machine_memory_mb(), f"{path}:problem", "this machine's memory")
    runs = [RunSpec(method, setting_id({}), {}, cfg, s) for s in seeds]
    return runs, spec, problem, scale


def cmd_params_validate(args: argparse.Namespace) -> int:
    from lop.params import expand_jobs, load_params, n_runs

    _set_max_runs(args)
    for f in args.files:
        if Path(f).name == "figures.yaml":
            from lop.analysis.registry import load_registry

            print(f"{f}: ok (figure registry; {len(load_registry(f).figures)} figures)")
            continue
        p = load_params(f)
        summary = ", ".join(f"{s}: {n_runs(p, s)} runs/{len(expand_jobs(p, s))} jobs" for s in p.data.scales)
        print(f"{f}: ok ({p.experiment}; {summary})")
    return 0


def cmd_params_jobs(args: argparse.Namespace) -> int:
    from lop.params import expand_jobs, load_params

    _set_max_runs(args)
    jobs = expand_jobs(load_params(args.file), args.scale)
    print(json.dumps([asdict(j) for j in jobs], indent=2))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain the network(s) a params file's scale names in ``problem.pretrained`` (budgeted_cl)."""
    from lop.params import load_params
    from lop.plan import pretrained_problems
    from lop.runner import resolve_device

    params = load_params(args.params)
    targets = pretrained_problems(params, args.scale)
    if args.out and len(targets) != 1:
        raise ConfigError("--out", f"the scale names {len(targets)} pretrained checkpoints; drop --out")
    if not targets:
        raise ConfigError(
            f"{args.params}:scales.{args.scale}.problem.pretrained", "no pretrained checkpoint to build"
        )
    from lop.experiments.budgeted_cl import pretrain, save_pretrained

    device = resolve_device(args.device or "cpu")
    for path, problem in targets.items():
        out = Path(args.out or path)
        save_pretrained(problem, pretrain(problem, device), out)
        print(f"wrote {out}")
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    from lop.experiments.base import experiments

    for name, spec in sorted(experiments().items()):
        print(f"{name:20s} {spec.description}")
    return 0


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"


def _device(text: str) -> str:
    """--device: auto | cpu | cuda | cuda:N (argparse turns the ValueError into a one-line error)."""
    value = text.strip().lower()
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError(text)


_device.__name__ = f"device ({DEVICE_CHOICES})"  # argparse names the type in its message


class _Parser(argparse.ArgumentParser):
    """Bad command-line input: one `error:` line naming the option (and where to look), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {_one_line(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from lop import __version__

    parser = _Parser(prog="lop", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a group of runs (one job) and write per-run results")
    src = run.add_argument_group("what to run")
    src.add_argument("--params", help="params file (default params/<experiment>.yaml)")
    src.add_argument("--experiment", help="experiment name (uses params/<experiment>.yaml)")
    src.add_argument("--run-file", help="a YAML run file instead of a params file")
    src.add_argument("--scale", default="demo", help="smoke | demo | paper (default demo)")
    src.add_argument(
        "--method", help="method name from the params file, or a packed group of them such as bp+l2 (pack_methods)"
    )
    src.add_argument("--setting-id", action="append", help="setting of the method (repeat; default all)")
    src.add_argument("--seeds", help="seeds, e.g. 0,1,2 or 0-29 (default: the scale's seeds)")
    run.add_argument("--out", required=True, help="runs root, e.g. results/runs/<experiment>/<scale>")
    run.add_argument(
        "--device", type=_device, help="auto | cpu | cuda | cuda:N (default: params file, else auto)"
    )
    run.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's choice / OMP_NUM_THREADS)"
    )
    run.add_argument("--checkpoint-every", type=int, help="checkpoint every N units")
    run.add_argument("--checkpoint-minutes", type=float, help="checkpoint at least every M minutes")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    run.add_argument("--models-dir", help="save network snapshots per run under this folder")
    run.add_argument(
        "--models-every",
        type=int,
        help="snapshot every N units (default: the scale's models_every; run files: 1)",
    )
    run.add_argument("--max-runs", type=int, help="cap on runs per scale of a params file (default 100000)")
    run.set_defaults(func=cmd_run)

    params = sub.add_parser("params", help="validate params files and list their jobs")
    psub = params.add_subparsers(dest="params_command", required=True)
    val = psub.add_parser("validate", help="validate params files")
    val.add_argument("files", nargs="+")
    val.add_argument("--max-runs", type=int, help="cap on runs per scale (default 100000)")
    val.set_defaults(func=cmd_params_validate)
    jobs = psub.add_parser("jobs", help="print the training jobs of a scale as JSON")
    jobs.add_argument("file")
    jobs.add_argument("--scale", default="demo")
    jobs.add_argument("--max-runs", type=int, help="cap on runs per scale (default 100000)")
    jobs.set_defaults(func=cmd_params_jobs)

    pre = sub.add_parser(
        "pretrain", help="pretrain the network a scale names in problem.pretrained (budgeted_cl)"
    )
    pre.add_argument("--params", required=True, help="params file, e.g. params/budgeted_cl.yaml")
    pre.add_argument("--scale", default="demo", help="smoke | demo | paper (default demo)")
    pre.add_argument("--out", help="write here instead of problem.pretrained")
    pre.add_argument("--device", type=_device, help="auto | cpu | cuda | cuda:N (default cpu)")
    pre.set_defaults(func=cmd_pretrain)

    exps = sub.add_parser("experiments", help="list the experiments")
    exps.set_defaults(func=cmd_experiments)

    from lop.cache import register as register_cache

    register_cache(sub)
    # Registering a group imports only argparse code: each command imports what it needs when it runs,
    # so `lop params validate` and `lop --help` load neither torch nor pandas nor matplotlib.
    from lop.analysis.commands import register as register_analysis
    from lop.data.commands import register as register_data

    register_data(sub)
    register_analysis(sub)
    return parser


def _one_line(text: str) -> str:
    """An error message on one line (embedded newlines from YAML or OS messages are folded)."""
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    set_max_runs(None)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LopError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # read-only folder, full disk, a path that is a file, ...
        where = e.filename or "output"
        print(f"error: {where}: {e.strerror or e}; check the path and free space", file=sys.stderr)
        return 2
    except RecursionError:
        print("error: input nested too deeply; simplify the file", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; reduce the sizes, runs per job or seeds", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
