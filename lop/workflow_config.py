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


def config_flag(value: Any) -> bool:
    """A validated boolean setting: true/false, 1/0, yes/no (from the command line they arrive as text)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
