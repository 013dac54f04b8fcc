"""The pipeline's config (`snakemake --config k=v`) checked against its JSON schema, with one clear message.

The schema is workflow/schemas/config.schema.yaml; config/config.yaml holds every key with its default.
Snakemake's own ``snakemake.utils.validate`` reports a jsonschema traceback-like dump; this module turns
the first problem into one line that names the key and the allowed values, so the workflow can stop
before any job is planned; `check_pipeline_config` adds the safety checks of `lop.limits` after it.
No Snakemake imports here (tests call it directly).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from lop.errors import ConfigError


def load_schema(path: str | Path) -> dict[str, Any]:
    try:
        schema = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(str(path), f"cannot read the config schema: {e}") from e
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        raise ConfigError(str(path), "not a JSON schema with `properties`")
    return schema


def _allowed(prop: dict[str, Any]) -> str:
    if "description" in prop:
        return str(prop["description"])
    if "enum" in prop:
        return "one of: " + ", ".join(str(v) for v in prop["enum"])
    return f"a value of type {prop.get('type', '?')}"


def config_errors(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every problem of ``config`` as one line each (empty: valid). Unknown keys come first, by name."""
    import jsonschema

    props: dict[str, Any] = schema["properties"]
    out = []
    for key in sorted(k for k in config if k not in props):
        hint = difflib.get_close_matches(str(key), list(props), n=1)
        did_you_mean = f" (did you mean {hint[0]}?)" if hint else ""
        out.append(f"--config {key}: unknown key{did_you_mean}; known keys are: {', '.join(sorted(props))}")
    known = {k: v for k, v in config.items() if k in props}
    validator = jsonschema.Draft202012Validator({**schema, "additionalProperties": True})
    seen = set()
    for error in sorted(validator.iter_errors(known), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(error.absolute_path)
        if not path:
            out.append(f"--config: {error.message}")
            continue
        key = str(path[0])
        if key in seen:
            continue
        seen.add(key)
        out.append(f"--config {key}={config[key]!r} is not allowed; use {_allowed(props[key])}")
    return out


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise ConfigError naming each bad key and its allowed values (one line, problems joined by `; `)."""
    errors = config_errors(config, load_schema(schema_path))
    if errors:
        raise ConfigError("", "; ".join(errors))


def check_pipeline_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """What the workflow runs at parse time: the schema (keys, types, allowed values: the one source of
    truth), then the safety checks the schema cannot express (`lop.limits.check_workflow_config`: plain
    paths, safe experiment names, a device that exists here). Raises `ConfigError` (one line)."""
    from lop.limits import check_workflow_config

    check_config(config, schema_path)
    check_workflow_config(config)


ALL = "all"


def resolve_experiments(
    value: str | list[str] | None, groups: dict[str, list[str]] | None, available: set[str]
) -> tuple[set[str] | None, list[str]]:
    """What ``--config experiments`` selects, from the experiments that have a params file.

    ``value`` is a comma list (or a list) of experiment names and group names; a group (config key
    ``experiment_groups``, e.g. ``paper`` = the paper's figures, ``cl`` = the continual-learning systems)
    stands for its members, and ``all`` (or an empty value) for every params file. Returns ``(selection,
    notes)``: ``None`` selects everything; ``notes`` has one line per group member without a params file
    (a custom ``params_dir`` may hold only some experiments; the member is left out, and said so). A name
    that is neither an experiment nor a group, or a group named like an experiment, raises `ConfigError`.
    """
    groups = dict(groups or {})
    clash = sorted(set(groups) & (available | {ALL}))
    if clash:
        raise ConfigError(
            "--config experiment_groups",
            f"group name {clash[0]!r} is also an experiment (or `all`); rename it",
        )
    if not value:
        return None, []
    names = value.split(",") if isinstance(value, str) else list(value)
    if ALL in names:
        return None, []
    chosen: set[str] = set()
    notes: list[str] = []
    unknown = []
    for name in names:
        if name in groups:
            members = list(groups[name] or [])
            absent = [m for m in members if m not in available]
            if absent:
                notes.append(
                    f"[lop] --config experiments: group {name!r} lists {', '.join(absent)}, which "
                    "have no params file here; left out"
                )
            chosen.update(m for m in members if m in available)
        elif name in available:
            chosen.add(name)
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(
            "--config experiments",
            f"no params file or group named {', '.join(unknown)}; experiments: {', '.join(sorted(available))}; "
            f"groups: {', '.join([*sorted(groups), ALL])}",
        )
    return chosen, notes


def config_flag(value: Any) -> bool:
    """A validated boolean setting: true/false, 1/0, yes/no (from the command line they arrive as text)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
