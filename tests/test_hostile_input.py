"""Hostile input (issue #18): generated bad params files, run files, CLI arguments, data folders, run
folders and Snakemake ``--config`` values. Every generated input either runs (valid) or exits 2 with
exactly one ``error:`` line and no traceback; nothing is written outside ``--out``; a failed run leaves
no ``run.json``. The fast profile runs in the default suite; ``-m slow`` runs a longer one.

Set ``LOP_HOSTILE_REPORT=path.json`` to record how many inputs each entry point tried, and their outcomes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import tracemalloc
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from analysis_fakes import write_run
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST_N = 25
SLOW_N = 200
PROFILES = [FAST_N, pytest.param(SLOW_N, marks=pytest.mark.slow)]
OUTCOMES: dict[str, Counter[str]] = defaultdict(Counter)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("LOP_HOSTILE_REPORT")
    if path:
        old = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        for entry, counts in OUTCOMES.items():
            merged = Counter(old.get(entry, {}))
            merged.update(counts)
            old[entry] = dict(merged)
        Path(path).write_text(json.dumps(old, indent=2, sort_keys=True))


def explore(strategy: st.SearchStrategy, check: Callable[[Any], None], n: int) -> None:
    """Run `check` on `n` generated examples (no deadline, no example database; the fast profile is
    derandomized so the default suite is reproducible)."""

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=n <= FAST_N,  # the default suite tries the same inputs every time; -m slow explores
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def inner(case: Any) -> None:
        check(case)

    inner()


def call(*args: str) -> tuple[int, str, str]:
    """`lop.cli.main` in-process; any exception other than SystemExit propagates (= a traceback)."""
    from lop.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def check_outcome(entry: str, code: int, err: str, *, must_fail: bool = False) -> None:
    """0 with no error line, or 2 with exactly one ``error:`` line (the last), never a traceback."""
    assert code in (0, 2), (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 2:
        assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-2000:]
    else:
        assert not errors, err[-2000:]
        assert not must_fail, f"{entry}: accepted bad input silently"
    OUTCOMES[entry]["error" if code == 2 else "ran"] += 1


class Sandbox:
    """``root/a/b/c/box`` with inputs in ``box`` and ``--out`` at ``box/out``: any file that appears
    under ``root`` but outside ``box`` is a write outside the allowed folders."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lop-hostile-"))
        self.box = self.root / "a" / "b" / "c" / "box"
        self.box.mkdir(parents=True)
        self.out = self.box / "out"

    def escaped(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if not p.is_relative_to(self.box) and not p.is_dir()]

    def results(self) -> list[Path]:
        return [*self.root.rglob("run.json"), *self.root.rglob("metrics.parquet")]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Mutations of YAML data and text
# ---------------------------------------------------------------------------------------------

BAD_NAMES = [
    "..",
    ".",
    "../../../escape",
    "../../escape",
    "a/../../../../escape",
    "/tmp/lop-hostile-abs",
    "a/b",
    "a\\b",
    "nul\x00byte",
    "x" * 300,
    "-rf",
    ".hidden",
    "",
    "ok name",
    "café",
]
# Numbers are either small (training stays short) or beyond the documented caps.
HOSTILE_VALUES = st.one_of(
    st.sampled_from(
        [
            None,
            True,
            False,
            -1,
            0,
            1,
            2,
            2**31 * 10,
            2**63,
            2**70,
            -(2**70),
            10**12,
            0.5,
            -1.0,
            1e30,
            -1e30,
            float("nan"),
            float("inf"),
            float("-inf"),
            "",
            "five",
            "1e-3",
            [],
            [1, 2],
            {},
            {"k": 1},
        ]
    ),
    st.sampled_from(BAD_NAMES),
    st.text(max_size=12),
)


def leaf_paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of nested YAML data (mappings and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += leaf_paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += leaf_paths(v, (*prefix, i))
    return out


def _parent(data: Any, path: tuple) -> tuple[Any, Any] | None:
    node = data
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return (node, path[-1]) if isinstance(node, dict | list) else None


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


BOMB = "lol0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


@st.composite
def data_mutation(draw: st.DrawFn, base: dict[str, Any]) -> tuple[Any, list[str]]:
    """(mutated data, description) of 0-3 structural mutations."""
    data = json.loads(json.dumps(base))
    paths = leaf_paths(base)
    notes = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["set", "set", "set", "delete", "unknown", "deep", "grid", "seeds"]))
        path = draw(st.sampled_from(paths))
        where = _parent(data, path)
        if kind == "grid":
            grid = {k: [0.1 * (i + 1) for i in range(20)] for k in ("momentum", "weight_decay", "noise_std")}
            grid["lr"] = [0.001 * (i + 1) for i in range(20)]
            grid["eps"] = [1e-8 * (i + 1) for i in range(20)]
            for m in _methods(data):
                m["grid"] = grid
            notes.append("grid bomb")
            continue
        if kind == "seeds":
            value = draw(
                st.sampled_from([{"start": 0, "count": 10**12}, [0, 0], [2**70], [-1], list(range(3))])
            )
            for holder in _seed_holders(data):
                holder["seeds"] = value
            notes.append(f"seeds={str(value)[:40]}")
            continue
        if where is None:
            continue
        node, key = where
        if kind == "set":
            value = draw(HOSTILE_VALUES)
            if isinstance(node, dict) or (isinstance(key, int) and key < len(node)):
                node[key] = value
            notes.append(f"set {path}={value!r:.40}")
        elif kind == "delete":
            with contextlib.suppress(KeyError, IndexError, TypeError):
                del node[key]
            notes.append(f"delete {path}")
        elif kind == "unknown" and isinstance(node, dict):
            node[f"bogus_{draw(st.integers(0, 9))}"] = draw(HOSTILE_VALUES)
            notes.append(f"unknown key near {path}")
        elif kind == "deep":
            if isinstance(node, dict) or (isinstance(key, int) and key < len(node)):
                node[key] = nested(draw(st.sampled_from([70, 200, 2000])))
            notes.append(f"deep {path}")
    return data, notes


def _methods(data: Any) -> list[dict]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            if k in ("methods", "patch") and isinstance(v, dict):
                out += [m for m in v.values() if isinstance(m, dict)]
            else:
                out += _methods(v)
    return out


def _seed_holders(data: Any) -> list[dict]:
    out = []
    if isinstance(data, dict):
        if "seeds" in data:
            out.append(data)
        for v in data.values():
            out += _seed_holders(v)
    return out


def dump(data: Any) -> str:
    try:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, RecursionError):
        return "{}\n"


@st.composite
def text_mutation(draw: st.DrawFn, text: str) -> tuple[bytes, str]:
    """(file bytes, description) of one text-level mutation (or none)."""
    lines = text.splitlines(keepends=True)
    kind = draw(
        st.sampled_from(["none", "none", "none", "dup_line", "dup_key", "bytes", "bomb", "truncate", "odd"])
    )
    if kind == "dup_line" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
        return "".join(lines).encode(), kind
    if kind == "dup_key":
        key = draw(st.sampled_from(["experiment", "seeds", "method", "config", "scales"]))
        return (text + f"\n{key}: null\n").encode(), kind
    if kind == "bytes":
        raw = text.encode()
        i = draw(st.integers(0, len(raw)))
        return raw[:i] + draw(st.binary(min_size=1, max_size=8)) + b"\xff" + raw[i:], kind
    if kind == "bomb":
        return (BOMB + text).encode(), kind
    if kind == "truncate":
        raw = text.encode()
        return raw[: draw(st.integers(0, len(raw)))], kind
    if kind == "odd":
        return draw(
            st.sampled_from(
                [b"", b"null\n", b"[1, 2]\n", b"\x00\x00", b"&a [*a]\n", b"a: !!python/name:os.system\n"]
            )
        ), kind
    return text.encode(), kind


def too_long(problem: Any) -> bool:
    """A valid SCR problem that would train for minutes (e.g. a deleted ``n_examples`` falls back to
    the paper's 1,000,000): the run is valid input, so the suite records it without training it."""
    return getattr(problem, "n_examples", 0) > 20_000 or getattr(problem, "chunk", 1000) < 100


def run_file_problem(path: Path) -> Any:
    """The run file's problem when the file is valid enough to build one, else None."""
    from lop.config import from_dict
    from lop.errors import LopError
    from lop.experiments.scr import SCRProblem
    from lop.limits import load_yaml

    try:
        data = load_yaml(path)
        return from_dict(SCRProblem, data.get("problem", {}), "x") if isinstance(data, dict) else None
    except (LopError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# Params files: `lop params validate` and `lop run --params`
# ---------------------------------------------------------------------------------------------

SCR = yaml.safe_load((REPO / "params" / "scr.yaml").read_text())


@st.composite
def params_case(draw: st.DrawFn) -> tuple[bytes, str, list[str]]:
    data, notes = draw(data_mutation(SCR))
    method = "bp"
    if draw(st.booleans()) and isinstance(data, dict):
        name = draw(st.sampled_from(BAD_NAMES))
        scales = data.get("scales")
        scales = scales if isinstance(scales, dict) else {}
        for holder in [data, *[s for s in scales.values() if isinstance(s, dict)]]:
            for key in ("methods", "patch"):
                methods = holder.get(key) if isinstance(holder, dict) else None
                if isinstance(methods, dict) and "bp" in methods:
                    methods[name] = methods.pop("bp")
            only = holder.get("only") if isinstance(holder, dict) else None
            if isinstance(only, list):
                holder["only"] = [name if m == "bp" else m for m in only]
        method, notes = name, [*notes, f"method {name!r:.40}"]
    raw, tnote = draw(text_mutation(dump(data)))
    return raw, method, [*notes, tnote]


@pytest.mark.parametrize("n", PROFILES)
def test_generated_params_files(n):
    def check(case: tuple[bytes, str, list[str]]) -> None:
        raw, method, notes = case
        box = Sandbox()
        try:
            path = box.box / "p.yaml"
            path.write_bytes(raw)
            code, _, err = call("params", "validate", str(path))
            check_outcome("lop params validate", code, err)
            if "\x00" in method:
                return  # argv cannot hold NUL in a real process
            if code == 0:
                from lop.params import load_params

                p = load_params(path)
                if "smoke" in p.problems and too_long(p.problems["smoke"]):
                    OUTCOMES["lop run --params"]["valid, too long to train here"] += 1
                    return
            code, _, err = call(
                "run", "--params", str(path), "--scale", "smoke", f"--method={method}", "--seeds", "0",
                "--out", str(box.out),
            )  # fmt: skip
            check_outcome("lop run --params", code, err)
            assert not box.escaped(), (notes, box.escaped())
            if code == 2:
                assert not box.results(), notes
        finally:
            box.close()

    explore(params_case(), check, n)


# ---------------------------------------------------------------------------------------------
# Run files and CLI arguments: `lop run --run-file`
# ---------------------------------------------------------------------------------------------

RUN_FILE = {
    "experiment": "scr",
    "problem": {"n_examples": 2000, "bin_size": 1000, "chunk": 500, "flip_every": 500},
    "method": "bp",
    "config": {"lr": 0.01},
    "seeds": [0],
}


@st.composite
def run_file_case(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    data, notes = draw(data_mutation(RUN_FILE))
    if draw(st.booleans()) and isinstance(data, dict):
        key = draw(st.sampled_from(["method", "scale"]))
        data[key] = draw(st.sampled_from(BAD_NAMES))
        notes.append(f"{key}={data[key]!r:.40}")
    raw, tnote = draw(text_mutation(dump(data)))
    return raw, [*notes, tnote]


@pytest.mark.parametrize("n", PROFILES)
def test_generated_run_files(n):
    def check(case: tuple[bytes, list[str]]) -> None:
        raw, notes = case
        box = Sandbox()
        try:
            path = box.box / "run.yaml"
            path.write_bytes(raw)
            problem = run_file_problem(path)
            if problem is not None and too_long(problem):
                OUTCOMES["lop run --run-file"]["valid problem, too long to train here"] += 1
                return
            code, _, err = call("run", "--run-file", str(path), "--out", str(box.out))
            check_outcome("lop run --run-file", code, err)
            assert not box.escaped(), (notes, box.escaped())
            if code == 2:
                assert not box.results(), notes
        finally:
            box.close()

    explore(run_file_case(), check, n)


def _opt(values: list[str]) -> st.SearchStrategy:
    return st.one_of(
        st.none(), st.sampled_from(values), st.text(max_size=6).filter(lambda s: "\x00" not in s)
    )


CLI_OPTIONS = {
    "--device": ["cpu", "auto", "tpu", "gpu", "CPU", "mps", "cpu:99", "cuda", "cuda:0", "cuda:99", ""],
    "--seeds": ["0", "0,1", "1,1", "0-999999999", str(2**63), str(2**70), "-1", "5-2", "a", "", ",", "0-1,1"],
    "--checkpoint-every": ["0", "-1", "1", "2", "x", "1e3", "99999999999999999999"],
    "--checkpoint-minutes": ["nan", "inf", "-1", "0", "0.5", "1e400", "x"],
    "--models-every": ["0", "-1", "1", "x"],
    "--threads": ["0", "-1", "1", "99999", "x"],
    "--max-runs": ["0", "-5", "1", "x"],
}


@st.composite
def cli_case(draw: st.DrawFn) -> tuple[list[str], str]:
    args = []
    for opt, values in CLI_OPTIONS.items():
        value = draw(_opt(values))
        if value is not None:
            args.append(f"{opt}={value}")
    out = draw(st.sampled_from(["out", "file", "file/sub", "out/../out2", "out/./x"]))
    if draw(st.booleans()):
        args.append(f"--models-dir={draw(st.sampled_from(['models', 'file', 'file/m']))}")
    return args, out


@pytest.mark.parametrize("n", PROFILES)
def test_generated_cli_arguments(n):
    def check(case: tuple[list[str], str]) -> None:
        args, out = case
        box = Sandbox()
        try:
            (box.box / "run.yaml").write_text(dump(RUN_FILE))
            (box.box / "file").write_text("not a folder")
            code, _, err = call(
                "run", "--run-file", str(box.box / "run.yaml"), "--out", str(box.box / out),
                *[a.replace("--models-dir=", f"--models-dir={box.box}/") for a in args],
            )  # fmt: skip
            check_outcome("lop run (arguments)", code, err)
            assert not box.escaped(), (args, box.escaped())
            assert (box.box / "file").read_text() == "not a folder"
            if code == 2:
                assert not box.results(), args
        finally:
            box.close()

    explore(cli_case(), check, n)


# ---------------------------------------------------------------------------------------------
# Data: `lop data verify` / `lop data prepare` on forged raw and prepared folders
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_folders(tmp_path_factory) -> tuple[Path, Path]:
    from lop.data.mnist import prepare_mnist
    from lop.data.standins import write_mnist_standin

    base = tmp_path_factory.mktemp("mnist")
    write_mnist_standin(base / "raw", n_train=200, n_test=50, seed=0)
    prepare_mnist(base / "raw", base / "prepared")
    return base / "raw", base / "prepared"


def _gzip_bomb(n_bytes: int) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    header = b"\x00\x00\x08\x03" + (10**6).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    parts = [co.compress(header)]
    block = bytes(1 << 20)
    parts += [co.compress(block) for _ in range(n_bytes >> 20)]
    return b"".join([*parts, co.flush()])


RAW_OPS = ["truncate", "dims", "ndims", "random", "bomb", "labels", "empty", "delete", "pixel"]


@st.composite
def raw_case(draw: st.DrawFn) -> tuple[str, str, bool, int, bytes]:
    from lop.data import mnist

    op = draw(st.sampled_from(RAW_OPS))
    name = draw(st.sampled_from(list(mnist.FILES)))
    if op == "labels":
        name = draw(st.sampled_from([mnist.TRAIN_LABELS, mnist.TEST_LABELS]))
    return (
        op,
        name,
        draw(st.booleans()),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.binary(min_size=1, max_size=64)),
    )


def _forge_raw(folder: Path, op: str, name: str, seed: int, junk: bytes) -> None:
    path = folder / name
    idx = gzip.decompress(path.read_bytes())
    rng = np.random.default_rng(seed)
    if op == "truncate":
        payload = idx[: int(rng.integers(0, len(idx) - 1))]
    elif op == "dims":
        payload = idx[:4] + int(rng.integers(2**20, 2**32)).to_bytes(4, "big") + idx[8:]
    elif op == "ndims":
        payload = idx[:3] + b"\xff" + idx[4:]
    elif op == "random":
        payload = junk * (1 + 200 // len(junk))
    elif op == "bomb":
        path.write_bytes(_gzip_bomb(256 << 20))
        return
    elif op == "labels":
        payload = idx[:8] + bytes([10 + seed % 246]) + idx[9:]
    elif op == "empty":
        path.write_bytes(b"")
        return
    elif op == "delete":
        path.unlink()
        return
    else:  # pixel: a valid file with other content
        b = bytearray(idx)
        b[-1] ^= 0xFF
        payload = bytes(b)
    path.write_bytes(gzip.compress(payload, mtime=0))


@pytest.mark.parametrize("n", PROFILES)
def test_generated_raw_data(n, mnist_folders):
    raw, _ = mnist_folders

    def check(case: tuple[str, str, bool, int, bytes]) -> None:
        op, name, forge, seed, junk = case
        box = Sandbox()
        try:
            folder = box.box / "raw"
            shutil.copytree(raw, folder)
            _forge_raw(folder, op, name, seed, junk)
            if forge and (folder / name).is_file():  # rewrite standin.json so the md5s match
                info = json.loads((folder / "standin.json").read_text())
                info["files"][name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
                (folder / "standin.json").write_text(json.dumps(info))
            must_fail = not (op == "pixel" and forge)
            (code, _, err), peak = peak_python_memory(lambda: call("data", "verify", str(folder)))
            assert peak < 256 * 2**20, "decompression is not bounded"
            check_outcome("lop data verify (raw)", code, err, must_fail=must_fail)
            code, _, err = call("data", "prepare", "mnist", "--raw", str(folder), "--out", str(box.out))
            check_outcome("lop data prepare", code, err, must_fail=must_fail)
            if code == 2:
                assert not box.out.exists()
        finally:
            box.close()

    explore(raw_case(), check, n)


JSON_VALUES = st.sampled_from([None, "x", 5, -1, 2**70, 1.5, [], {}, True, [1, 2], {"sha256": 1}])


@st.composite
def prepared_case(draw: st.DrawFn) -> tuple[str, Any, str, int]:
    kind = draw(
        st.sampled_from(["manifest_key", "entry", "entry_key", "files", "drop_label", "label_range", "npy"])
    )
    return (
        kind,
        draw(JSON_VALUES),
        draw(st.sampled_from(["sha256", "shape", "dtype"])),
        draw(st.integers(0, 3)),
    )


def _forge_prepared(folder: Path, kind: str, value: Any, key: str, i: int) -> bool:
    """Apply one forgery; returns whether `lop data verify` must reject it."""
    m = json.loads((folder / "manifest.json").read_text())
    names = sorted(m["files"])
    name = names[i % len(names)]
    must_fail = True
    if kind == "manifest_key":
        k = ["dataset", "files", "stand_in", "n_classes"][i]
        m[k] = value
        if k == "stand_in":
            must_fail = not isinstance(value, bool)
        if k == "n_classes":
            must_fail = value is not None and not (type(value) is int and value >= 10)
    elif kind == "entry":
        m["files"][name] = value
        must_fail = True
    elif kind == "entry_key":
        m["files"][name][key] = value
    elif kind == "files":
        m["files"] = {}
    elif kind in ("drop_label", "label_range"):
        label = ["train_labels.npy", "test_labels.npy"][i % 2]
        y = np.load(folder / label)
        y = y[:-1] if kind == "drop_label" else np.where(np.arange(len(y)) == 0, 10 + i, y).astype(np.uint8)
        np.save(folder / label, y)
        m["files"][label] = {
            "sha256": hashlib.sha256((folder / label).read_bytes()).hexdigest(),
            "shape": list(y.shape),
            "dtype": "uint8",
        }
    else:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // (2 + i)])
    (folder / "manifest.json").write_text(json.dumps(m))
    return must_fail


@pytest.mark.parametrize("n", PROFILES)
def test_generated_prepared_data(n, mnist_folders):
    _, prepared = mnist_folders

    def check(case: tuple[str, Any, str, int]) -> None:
        box = Sandbox()
        try:
            folder = box.box / "prepared"
            shutil.copytree(prepared, folder)
            must_fail = _forge_prepared(folder, *case)
            code, _, err = call("data", "verify", str(folder))
            check_outcome("lop data verify (prepared)", code, err, must_fail=must_fail)
        finally:
            box.close()

    explore(prepared_case(), check, n)


# ---------------------------------------------------------------------------------------------
# Run folders: `lop aggregate`
# ---------------------------------------------------------------------------------------------

RUN_KEYS = [
    "seed",
    "status",
    "diverged_at",
    "method",
    "setting_id",
    "experiment",
    "scale",
    "stand_in",
    "config",
]


@st.composite
def aggregate_case(draw: st.DrawFn) -> tuple[str, str, Any]:
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "json", "parquet", "scale_mix", "out"]))
    key = draw(st.sampled_from(RUN_KEYS))
    value = draw(st.one_of(JSON_VALUES, st.sampled_from(["complete", "diverged", 0, 3, 2**63, "0", 0.0])))
    return kind, key, value


@pytest.mark.parametrize("n", PROFILES)
def test_generated_run_folders(n):
    def check(case: tuple[str, str, Any]) -> None:
        kind, key, value = case
        box = Sandbox()
        try:
            runs = box.box / "runs"
            metrics = {"loss": (np.arange(4), np.linspace(1, 0, 4))}
            paths = [write_run(runs, "bp", "lr=0.01", s, metrics, {"lr": 0.01}) for s in (0, 1)]
            target = box.out / "agg.parquet"
            must_fail = True
            rj = json.loads(paths[1].read_text())
            if kind == "set":
                rj[key] = value
                must_fail = {
                    "seed": not (type(value) is int and value == 1),
                    "status": value != "complete",
                    "diverged_at": value is not None,
                    "experiment": value != "toy",
                    "scale": value != "demo",
                    "stand_in": not isinstance(value, bool),
                    "config": not (value is None or isinstance(value, dict)),
                }.get(key, True)
                paths[1].write_text(json.dumps(rj))
            elif kind == "delete":
                rj.pop(key, None)
                must_fail = key in ("seed", "status", "method", "setting_id", "experiment", "scale")
                paths[1].write_text(json.dumps(rj))
            elif kind == "json":
                paths[1].write_bytes(paths[1].read_bytes()[:20] + b"\xff")
            elif kind == "parquet":
                pq = paths[1].with_name("metrics.parquet")
                pq.write_bytes(pq.read_bytes()[:50])
            elif kind == "scale_mix":
                rj["scale"], rj["config"] = "paper", {}
                paths[1].write_text(json.dumps(rj))
            else:
                target = box.box / "runs"  # an output that is a folder
            code, _, err = call("aggregate", "--runs", str(runs), "--out", str(target))
            check_outcome("lop aggregate", code, err, must_fail=must_fail)
            if code == 2:
                assert not target.is_file()
            assert not box.escaped()
        finally:
            box.close()

    explore(aggregate_case(), check, n)


# ---------------------------------------------------------------------------------------------
# Snakemake --config (the schema the workflow calls first)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", PROFILES)
def test_generated_workflow_config(n):
    """What workflow/rules/common.smk runs (`check_pipeline_config`: the schema, then the safety checks of
    `lop.limits`) on generated --config dicts: one-line error, or a config the schema and the safety
    checks both accept."""
    from lop.errors import ConfigError
    from lop.workflow_config import check_pipeline_config, load_schema

    schema_path = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    known = list(load_schema(schema_path)["properties"])
    keys = st.sampled_from([*known, "sclae", "device ", "x"])
    values = st.one_of(
        HOSTILE_VALUES,
        st.sampled_from(["smoke", "demo", "paper", "cpu", "scr", "1", "results", "../x", "a\x00b", "scr,.."]),
    )

    def check(config: dict[str, Any]) -> None:
        try:
            check_pipeline_config(config, schema_path)
        except ConfigError as e:
            assert "\n" not in str(e)
            OUTCOMES["snakemake --config (schema)"]["error"] += 1
            return
        OUTCOMES["snakemake --config (schema)"]["ran"] += 1
        assert config.get("scale", "demo") in ("smoke", "demo", "paper")
        assert set(config) <= set(known)
        for name in str(config.get("experiments") or "").split(","):
            assert ".." not in name and "/" not in name
        for key in ("params_dir", "figures", "results"):
            assert "\x00" not in str(config.get(key) or "")

    explore(st.dictionaries(keys, values, max_size=4), check, n)


# ---------------------------------------------------------------------------------------------
# The issue's own examples
# ---------------------------------------------------------------------------------------------


def peak_python_memory(fn):
    """(fn(), peak bytes Python allocated while it ran): a bomb is bounded when this stays small."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bombs_stop_before_expanding(tmp_path):
    """Each bomb is refused before it is expanded: the memory it costs stays far below the expansion."""
    from lop.limits import load_yaml_text, parse_seeds

    def refused(fn):
        def run():
            with pytest.raises(Exception) as info:
                fn()
            return info
        return peak_python_memory(run)

    grid = dump({"experiment": "scr"})
    for text in (BOMB, "[" * 100_000 + "]" * 100_000):
        _, peak = refused(lambda text=text: load_yaml_text(text, "x"))
        assert peak < 64 * 2**20
    load_yaml_text(grid, "x")
    info, peak = refused(lambda: parse_seeds("0-999999999"))
    assert "more than" in str(info.value) and peak < 2**20  # a list of 10^9 seeds would be > 8 GB
    data = json.loads(json.dumps(SCR))
    data["methods"]["bp"]["grid"] = {k: list(range(1, 41)) for k in ("a", "b", "c", "d")}
    data["scales"]["smoke"]["patch"]["bp"]["grid"] = {k: list(range(1, 41)) for k in ("a", "b", "c", "d")}
    path = tmp_path / "grid.yaml"
    path.write_text(dump(data))
    (code, _, err), peak = peak_python_memory(lambda: call("params", "validate", str(path)))
    assert code == 2 and "settings x" in err and "above the cap" in err
    assert peak < 64 * 2**20  # 40^4 = 2.56M settings are counted, not expanded
    code, _, err = call("params", "validate", "--max-runs", "1", "params/scr.yaml")
    assert code == 2 and "above the cap of 1" in err


def test_escape_method_writes_nothing_outside_out():
    box = Sandbox()
    try:
        data = dict(RUN_FILE, method="../../../escape")
        (box.box / "run.yaml").write_text(dump(data))
        code, _, err = call("run", "--run-file", str(box.box / "run.yaml"), "--out", str(box.out))
        assert code == 2 and "not a safe file name" in err and not box.escaped() and not box.results()
    finally:
        box.close()


def test_distinct_seeds_give_distinct_streams_at_the_range_edges(tmp_path):
    from lop.rng import key_words

    edges = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**62, 2**63 - 2, 2**63 - 1]
    words = {key_words(s, "init", 0) for s in edges}
    assert len(words) == len(edges)
    code, _, err = call(
        "run", "--params", "params/scr.yaml", "--method", "bp", "--seeds", str(2**63), "--out", str(tmp_path)
    )
    assert code == 2 and "2**63" in err


def test_yaml_1e_minus_3_is_a_float_and_duplicates_are_errors(tmp_path):
    from lop.limits import load_yaml_text

    assert load_yaml_text("lr: 1e-3\nn: 2e3\n", "x") == {"lr": 0.001, "n": 2000.0}
    with pytest.raises(Exception, match="duplicate key 'lr'"):
        load_yaml_text("lr: 0.1\nlr: 0.2\n", "x")


def test_tampered_checkpoint_is_refused(tmp_path):
    import torch

    from lop.errors import CheckpointError
    from lop.runner import _checked_resume_state

    state = {"unit": 10**6, "elapsed": 1.0, "started": "t", "metrics": {}}
    with pytest.raises(CheckpointError, match="unit"):
        _checked_resume_state(state, tmp_path / "c.pt", 40, 2)
    state = {
        "unit": 3,
        "elapsed": 1.0,
        "started": "t",
        "metrics": {"loss": {"steps": torch.zeros(3), "values": torch.zeros(1, 3)}},
    }
    with pytest.raises(CheckpointError, match="shape"):
        _checked_resume_state(state, tmp_path / "c.pt", 40, 2)


def test_snakemake_config_is_checked_by_the_schema():
    from pipeline_helpers import snakemake

    proc = snakemake(REPO, "-n", "figures", "--config", "scale=../../x", check=False, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "invalid configuration: --config scale" in text


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_names_are_refused(name, tmp_path):
    from lop.errors import ConfigError
    from lop.limits import inside, safe_component

    with pytest.raises(ConfigError):
        safe_component(name, "where")
    with pytest.raises(ConfigError, match="outside"):
        inside(tmp_path / "out", tmp_path / "out" / ".." / "x")
    assert safe_component("lr=0.01,cbp.replacement_rate=1e-05", "w")


def test_full_disk_leaves_no_finished_run(tmp_path, monkeypatch):
    import errno

    import pandas as pd

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    (tmp_path / "run.yaml").write_text(dump(RUN_FILE))
    out = tmp_path / "out"
    code, _, err = call("run", "--run-file", str(tmp_path / "run.yaml"), "--out", str(out))
    check_outcome("faults", code, err, must_fail=True)
    assert "No space left on device" in err and "metrics.parquet" in err
    assert not list(out.rglob("run.json")) and not list(out.rglob("metrics.parquet"))
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix != ".pt"]


def test_nul_in_paths_is_an_error(tmp_path):
    for args in (
        ("params", "validate", "a\x00b.yaml"),
        ("run", "--run-file", "a\x00b", "--out", str(tmp_path)),
        ("run", "--run-file", "x.yaml", "--out", f"{tmp_path}/o\x00"),
    ):
        code, _, err = call(*args)
        check_outcome("faults", code, err, must_fail=True)
