"""docs/architecture.md is the contract: every `lop.` name and every `Class.attribute` it documents for
the core interfaces must exist in the code (issue 9, item 8)."""

from __future__ import annotations

import dataclasses
import importlib
import re

from conftest import REPO

from lop.algos.method_layer import MethodEntry, MethodHook, MethodStack
from lop.experiments.base import ExperimentSpec, Trainer

DOC = (REPO / "docs" / "architecture.md").read_text()
CLASSES = {
    "Trainer": Trainer,
    "ExperimentSpec": ExperimentSpec,
    "MethodHook": MethodHook,
    "MethodStack": MethodStack,
    "MethodEntry": MethodEntry,
}


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def _has(cls: type, attr: str) -> bool:
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return hasattr(cls, attr) or attr in fields or attr in getattr(cls, "__annotations__", {})


def test_documented_lop_names_exist():
    names = set(re.findall(r"`(lop(?:\.\w+)+)`", DOC))
    assert len(names) > 10
    missing = []
    for name in sorted(names):
        try:
            _resolve(name)
        except (ModuleNotFoundError, AttributeError):
            missing.append(name)
    assert not missing, f"docs/architecture.md names that do not exist: {missing}"


def test_documented_class_attributes_exist():
    refs = set(re.findall(r"`(\w+)\.(\w+)`", DOC))
    checked = [(c, a) for c, a in refs if c in CLASSES]
    assert len(checked) > 10
    missing = [f"{c}.{a}" for c, a in sorted(checked) if not _has(CLASSES[c], a)]
    assert not missing, f"docs/architecture.md documents attributes that do not exist: {missing}"


def test_resolver_catches_a_drifted_name():
    """The check can fail: a renamed name is reported."""
    try:
        _resolve("lop.experiments.base.MetricRows")
    except AttributeError:
        pass
    else:
        raise AssertionError("MetricRows should not exist")
    assert not _has(Trainer, "diverged_mask")
