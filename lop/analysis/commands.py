"""``lop aggregate``, ``lop figure ...``, ``compare``, ``summary``, ``cl-table`` and ``budget-table``
subcommands (registered by `lop.cli`). Registering them imports nothing heavy: each command imports
its module (pandas, the plotting stack) when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from lop.analysis.registry import DEFAULT_REGISTRY


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command function that imports ``module`` only when it runs, then calls its ``name``."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), name)(args)

    run.__name__ = name
    return run


def _expected_outputs(params_file: str, scale: str) -> list[str]:
    from lop.params import expand_jobs, load_params

    return [out for job in expand_jobs(load_params(params_file), scale) for out in job.outputs]


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Aggregate an experiment's runs (exactly its params file's runs when --params is given)."""
    from lop.analysis.aggregate import aggregate_runs, write_aggregate

    expected = _expected_outputs(args.params, args.scale) if args.params else None
    table = aggregate_runs(args.runs, expected)
    write_aggregate(table, args.out)
    n_runs = len(table[["method", "setting_id", "seed"]].drop_duplicates())
    print(f"{args.out}: {n_runs} runs, {len(table)} rows")
    return 0


def cmd_figure_build(args: argparse.Namespace) -> int:
    """Draw one registry figure from an aggregate."""
    from lop.analysis.aggregate import read_aggregate
    from lop.analysis.figures import make_figure
    from lop.analysis.registry import load_registry
    from lop.errors import ConfigError

    registry = load_registry(args.registry)
    if args.figure not in registry.figures:
        raise ConfigError(
            str(args.registry), f"no figure {args.figure!r}; known: {', '.join(registry.figures)}"
        )
    spec = registry.figures[args.figure]
    table = read_aggregate(args.agg)
    for message in make_figure(spec, table, args.scale, registry.style, args.png, args.pdf, args.figure):
        print(f"warning: {message}", file=sys.stderr)
    print(f"{args.png}, {args.pdf}")
    return 0


def cmd_figure_list(args: argparse.Namespace) -> int:
    """List the registry's figures (id, paper figure, experiment)."""
    from lop.analysis.registry import load_registry

    registry = load_registry(args.registry)
    for fid, spec in registry.figures.items():
        print(f"{fid}\t{spec.paper or '-'}\t{spec.experiment}\t{spec.title}")
    return 0


def cmd_budget_table(args: argparse.Namespace) -> int:
    from lop.analysis.budgeted_table import write_table
    from lop.errors import DataError

    if not Path(args.agg).is_file():
        raise DataError(f"{args.agg}: no such aggregate; run `lop aggregate` for budgeted_cl first")
    table = write_table(args.agg, args.md, args.csv, args.scale)
    print(f"wrote {args.md} ({len(table)} rows)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``aggregate`` and ``figure {build,list}`` to the ``lop`` command line."""
    p = subparsers.add_parser("aggregate", help="aggregate finished runs into one tidy Parquet table")
    p.add_argument("--runs", required=True, type=Path, help="runs root, e.g. results/runs/scr/demo")
    p.add_argument("--out", required=True, type=Path, help="output, e.g. results/agg/scr-demo.parquet")
    p.add_argument("--params", help="params file: aggregate exactly its runs at --scale (all must exist)")
    p.add_argument("--scale", help="scale of --params (smoke, demo, paper)")
    p.set_defaults(func=_checked_aggregate)

    fig = subparsers.add_parser("figure", help="draw paper figures from aggregates")
    sub = fig.add_subparsers(dest="figure_command", required=True)
    b = sub.add_parser("build", help="draw one figure of the registry as PNG + PDF")
    b.add_argument("figure", help="figure id in the registry, e.g. fig1b")
    b.add_argument("--agg", required=True, type=Path, help="aggregate of the figure's experiment")
    b.add_argument("--scale", required=True, help="scale the aggregate was made at")
    b.add_argument("--png", required=True, type=Path)
    b.add_argument("--pdf", required=True, type=Path)
    b.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY)
    b.set_defaults(func=cmd_figure_build)
    bt = subparsers.add_parser("budget-table", help="budgeted_cl: every method vs naive at equal compute")
    bt.add_argument(
        "--agg", required=True, type=Path, help="aggregate, e.g. results/agg/budgeted_cl-demo.parquet"
    )
    bt.add_argument("--scale", required=True, help="scale of the aggregate")
    bt.add_argument("--md", required=True, type=Path)
    bt.add_argument("--csv", required=True, type=Path)
    bt.set_defaults(func=cmd_budget_table)
    ls = sub.add_parser("list", help="list the figures of the registry")
    ls.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY)
    ls.set_defaults(func=cmd_figure_list)

    c = subparsers.add_parser("compare", help="ours vs the paper's published values, as markdown + CSV")
    c.add_argument(
        "--agg", nargs="+", required=True, help="aggregates results/agg/<experiment>-<scale>.parquet"
    )
    c.add_argument("--registry", default="params/figures.yaml")
    c.add_argument("--scale", required=True)
    c.add_argument("--md", required=True, help="markdown table to write")
    c.add_argument("--csv", required=True, help="CSV table to write")
    c.set_defaults(func=_lazy("lop.analysis.compare", "cmd_compare"))
    s = subparsers.add_parser(
        "summary", help="an experiment's metrics JSON and per-figure plot CSVs (for DVC)"
    )
    s.add_argument("--agg", required=True, help="the experiment's aggregate")
    s.add_argument("--experiment", required=True)
    s.add_argument("--registry", default="params/figures.yaml")
    s.add_argument("--scale", required=True)
    s.add_argument("--metrics", required=True, help="JSON file to write")
    s.add_argument("--plots-dir", required=True, help="folder for <figure>.csv")
    s.set_defaults(func=_lazy("lop.analysis.compare", "cmd_summary"))
    t = subparsers.add_parser(
        "cl-table", help="forgetting and plasticity metrics side by side (task-sequence experiments)"
    )
    t.add_argument(
        "--agg", nargs="+", required=True, help="aggregates results/agg/<experiment>-<scale>.parquet"
    )
    t.add_argument("--scale", required=True)
    t.add_argument("--md", required=True, help="markdown table to write")
    t.add_argument("--csv", required=True, help="CSV table to write")
    t.set_defaults(func=_lazy("lop.analysis.cl_table", "cmd_cl_table"))


def _checked_aggregate(args: argparse.Namespace) -> int:
    from lop.errors import ConfigError

    if bool(args.params) != bool(args.scale):
        raise ConfigError("lop aggregate", "--params and --scale go together")
    return cmd_aggregate(args)
