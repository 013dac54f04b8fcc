"""The pipeline's --config is checked against workflow/schemas/config.schema.yaml before any job is planned
(issue #10): unknown keys and bad values stop with one message naming the key and the allowed values."""

from __future__ import annotations

import string

import pytest
import yaml
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from lop.errors import ConfigError
from lop.limits import PATH_CONFIG_KEYS, check_workflow_config
from lop.workflow_config import (
    check_config,
    check_pipeline_config,
    config_errors,
    config_flag,
    load_schema,
    resolve_experiments,
)

SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)
DEFAULTS = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
KEYS = set(SCHEMA["properties"])


def test_config_file_has_every_key_with_the_schemas_default():
    assert set(DEFAULTS) == KEYS
    for key, prop in SCHEMA["properties"].items():
        assert DEFAULTS[key] == prop["default"], key
    assert config_errors(DEFAULTS, SCHEMA) == []


@pytest.mark.parametrize(
    "override",
    [
        {"scale": "smoke"},
        {"scale": "paper"},
        {"from_cache": True},
        {"from_cache": "true"},
        {"from_cache": 0},
        {"experiments": "scr,permuted_mnist"},
        {"experiments": ["scr"]},
        {"device": "cuda:1"},
        {"device": "cpu"},
        {"figures": "my/figures.yaml", "params_dir": "p", "results": "/tmp/r"},
    ],
)
def test_good_values_pass(override):
    check_config({**DEFAULTS, **override}, SCHEMA_PATH)


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"sclae": "paper"}, ["sclae", "unknown key", "did you mean scale?", "known keys are"]),
        ({"scale": "papr"}, ["scale='papr'", "smoke, demo, paper"]),
        ({"scale": 1}, ["scale=1", "smoke, demo, paper"]),
        ({"device": "gpu"}, ["device='gpu'", "auto, cpu, cuda, cuda:N"]),
        ({"from_cache": "maybe"}, ["from_cache='maybe'", "true or false"]),
        ({"experiments": "scr;ppo"}, ["experiments='scr;ppo'", "comma list"]),
        ({"results": ""}, ["results=''", "folder"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, needles):
    with pytest.raises(ConfigError) as e:
        check_config({**DEFAULTS, **override}, SCHEMA_PATH)
    message = str(e.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


_key = st.text(string.ascii_letters + "_", min_size=1, max_size=12).filter(lambda k: k not in KEYS)
_value = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10))


@settings(max_examples=200, deadline=None)
@given(key=_key, value=_value)
def test_any_unknown_key_is_rejected_by_name(key, value):
    errors = config_errors({**DEFAULTS, key: value}, SCHEMA)
    assert len(errors) == 1
    assert errors[0].startswith(f"--config {key}: unknown key")
    for known in KEYS:
        assert known in errors[0]


@settings(max_examples=200, deadline=None)
@given(value=_value.filter(lambda v: v not in ("smoke", "demo", "paper")))
def test_any_scale_but_the_three_is_rejected_with_the_allowed_values(value):
    errors = config_errors({**DEFAULTS, "scale": value}, SCHEMA)
    assert errors == [f"--config scale={value!r} is not allowed; use one of: smoke, demo, paper"]


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=12))
def test_device_accepts_exactly_auto_cpu_cuda_and_cuda_n(value):
    good = value in ("auto", "cpu", "cuda") or (
        value.startswith("cuda:") and value[5:].isascii() and value[5:].isdigit()
    )
    errors = config_errors({**DEFAULTS, "device": value}, SCHEMA)
    assert (errors == []) == good, (value, errors)
    if not good:
        assert "device=" in errors[0] and "auto, cpu, cuda, cuda:N" in errors[0]


def test_several_problems_are_all_reported_on_one_line():
    errors = config_errors({**DEFAULTS, "sclae": "x", "device": "gpu", "scale": "papr"}, SCHEMA)
    assert [e.split(" ")[1].split("=")[0].rstrip(":") for e in errors] == ["sclae", "device", "scale"]


def test_the_safety_checks_hold_no_key_list_and_check_only_schema_keys():
    """One source of truth: the schema decides which keys exist; the safety checks ignore keys they do
    not check, and every key they do check is one of the schema's (renaming a key in the schema without
    the check would fail here instead of silently dropping the check)."""
    check_workflow_config({"sclae": "papr", "from_cache": "maybe", "scale": 7})  # the schema's business
    assert {*PATH_CONFIG_KEYS, "experiments", "device"} <= KEYS


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"results": "a\x00b"}, ["--config results", "plain path"]),
        ({"params_dir": "p\nq"}, ["--config params_dir", "plain path"]),
        ({"experiments": ["a" * 300]}, ["--config experiments"]),
        ({"device": "cuda:64"}, ["--config device", "not available here"]),
    ],
)
def test_what_the_schema_passes_the_safety_checks_can_still_refuse(override, needles):
    config = {**DEFAULTS, **override}
    assert config_errors(config, SCHEMA) == []  # the schema alone lets it through
    with pytest.raises(ConfigError) as e:
        check_pipeline_config(config, SCHEMA_PATH)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


PARAMS = {p.stem for p in (REPO / "params").glob("*.yaml")} - {"figures"}


def test_default_selects_the_papers_experiments_and_the_groups_cover_every_params_file():
    groups = DEFAULTS["experiment_groups"]
    chosen, notes = resolve_experiments(DEFAULTS["experiments"], groups, PARAMS)
    assert DEFAULTS["experiments"] == "paper" and notes == []
    assert chosen == {"scr", "permuted_mnist", "continual_imagenet", "incremental_cifar", "ppo_ant",
                      "ppo_slippery_ant", "ppo_mujoco"}  # fmt: skip
    # every params file belongs to exactly one group, so `paper,cl` is `all`
    members = [m for g in groups.values() for m in g]
    assert sorted(members) == sorted(PARAMS)
    assert resolve_experiments("paper,cl", groups, PARAMS)[0] == PARAMS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("all", None),
        ("scr,all", None),
        ("scr", {"scr"}),
        (["scr", "g"], {"scr", "a", "b"}),
        ("g,a", {"a", "b"}),
    ],
)
def test_resolve_experiments_expands_groups(value, expected):
    available = {"scr", "a", "b", "c"}
    assert resolve_experiments(value, {"g": ["a", "b"]}, available) == (expected, [])


def test_group_member_without_a_params_file_is_left_out_with_a_line():
    chosen, notes = resolve_experiments("g", {"g": ["a", "gone"]}, {"a", "b"})
    assert chosen == {"a"}
    assert len(notes) == 1 and "'g'" in notes[0] and "gone" in notes[0] and "left out" in notes[0]


@pytest.mark.parametrize(
    ("value", "groups", "needles"),
    [
        ("nope", {"g": ["a"]}, ["--config experiments", "nope", "experiments: a, b", "groups: g, all"]),
        ("a,nope,also", {}, ["nope, also"]),
        ("a", {"a": ["b"]}, ["--config experiment_groups", "'a'", "rename"]),
        ("a", {"all": ["b"]}, ["'all'"]),
    ],
)
def test_resolve_experiments_rejects_unknown_names_and_clashing_groups(value, groups, needles):
    with pytest.raises(ConfigError) as e:
        resolve_experiments(value, groups, {"a", "b"})
    for needle in needles:
        assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize(("value", "flag"), [(True, True), ("true", True), ("1", True), (1, True),
                                             (False, False), ("false", False), ("no", False), (0, False)])  # fmt: skip
def test_config_flag(value, flag):
    assert config_flag(value) is flag


@pytest.mark.pipeline
@pytest.mark.slow
@pytest.mark.parametrize(
    ("entry", "needles"),
    [
        ("sclae=paper", ["sclae", "did you mean scale?"]),
        ("scale=papr", ["scale='papr'", "smoke, demo, paper"]),
        ("device=gpu", ["device='gpu'", "auto, cpu, cuda, cuda:N"]),
    ],
)
def test_snakemake_stops_before_planning_on_bad_config(entry, needles):
    from pipeline_helpers import ROOT, snakemake

    proc = snakemake(ROOT, "-n", "--config", entry, check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("invalid configuration:") == 1, out
    for needle in needles:
        assert needle in out, out
    assert "Job stats" not in out and "train__" not in out
