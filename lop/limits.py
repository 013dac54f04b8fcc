"""Guards against hostile input: the one YAML loader, safe path components, and size limits.

Everything here fails with a `ConfigError` / `DataError` (one ``error:`` line, exit code 2) *before*
anything large is built: grid sizes and seed counts are computed arithmetically, YAML is checked for
size, depth and alias expansion before it is constructed, and gzip streams are decompressed with a cap.
The limits are documented in docs/reliability.md.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from lop.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# Limits (documented in docs/reliability.md)
# ---------------------------------------------------------------------------------------------

MAX_YAML_BYTES = 4 * 1024 * 1024  # a params / run / figures file
MAX_YAML_DEPTH = 64  # nesting of mappings and sequences
MAX_YAML_NODES = 200_000  # nodes after alias expansion ("billion laughs" stops here)
MAX_RUNS_DEFAULT = 100_000  # runs (settings x seeds) per scale of one params file; LOP_MAX_RUNS overrides
MAX_SEEDS = 100_000  # seeds of one scale / one `--seeds` argument
SEED_LIMIT = 2**63  # seeds are integers in [0, 2**63)
MAX_NAME = 200  # characters of one path component (file systems allow 255 bytes)
MAX_INT = 10**10  # any other integer in a params or run file
MAX_ABS_FLOAT = 1e9  # any float in a params or run file
MAX_LR = 1e3  # a step size above this is a typo (50 is a deliberate divergence test)
GZIP_CAP_DEFAULT = 64 * 1024 * 1024  # decompressed bytes of one MNIST idx file (largest: 47,040,016)

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=,+-]*$")


_max_runs_override: int | None = None


def set_max_runs(value: int | None) -> None:
    """Override the cap on runs per scale for this process (``--max-runs``; None = back to the default)."""
    global _max_runs_override
    _max_runs_override = value


def max_runs() -> int:
    """The cap on runs per scale of one params file: `set_max_runs`, else ``LOP_MAX_RUNS``, else
    `MAX_RUNS_DEFAULT`."""
    if _max_runs_override is not None:
        return _max_runs_override
    text = os.environ.get("LOP_MAX_RUNS", "")
    if not text:
        return MAX_RUNS_DEFAULT
    try:
        value = int(text)
    except ValueError:
        raise ConfigError("LOP_MAX_RUNS", f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise ConfigError("LOP_MAX_RUNS", f"expected a positive integer, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Path safety
# ---------------------------------------------------------------------------------------------


def safe_component(name: Any, where: str, what: str = "name") -> str:
    """`name` when it is one safe path component: letters, digits and ``_ . = , + -``, not starting
    with ``.`` or ``-``, at most `MAX_NAME` characters; else a `ConfigError` naming `where`."""
    if not isinstance(name, str):
        raise ConfigError(where, f"{what} must be a string, got {name!r}")
    if len(name) > MAX_NAME:
        raise ConfigError(where, f"{what} is {len(name)} characters long; use at most {MAX_NAME}")
    if not _NAME.match(name):
        raise ConfigError(
            where,
            f"{what} {name[:60]!r} is not a safe file name: use letters, digits and _ . = , + - "
            "(not starting with . or -, no / or ..)",
        )
    return name


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str], where: str = "--out") -> Path:
    """`path` when it resolves to a location under `root` (symlinks followed); else a `ConfigError`."""
    r = Path(root).resolve()
    p = Path(path).resolve()
    if p != r and not p.is_relative_to(r):
        raise ConfigError(where, f"{path} would be written outside {root}; refusing to write there")
    return Path(path)


def check_out_dir(out: str | os.PathLike[str], where: str = "--out") -> Path:
    """`out` when it is (or can become) a folder: not a file, not under a file, writable if it exists."""
    out = Path(out)
    if "\x00" in str(out):
        raise ConfigError(where, "the path contains a NUL byte")
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(
                    where, f"{p} is a file, not a folder; choose another output folder or remove it"
                )
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(where, f"{p} is not writable; choose a writable output folder")
            break
    return out


# ---------------------------------------------------------------------------------------------
# Seeds, grids, sanity of values
# ---------------------------------------------------------------------------------------------


def check_seeds(seeds: Any, where: str) -> list[int]:
    """A non-empty list of distinct integers in [0, 2**63), at most `MAX_SEEDS` of them."""
    if not isinstance(seeds, list | tuple):
        raise ConfigError(where, f"must be a list of integers, e.g. [0, 1, 2], got {seeds!r}")
    if not seeds:
        raise ConfigError(where, "empty seed list; give at least one seed, e.g. [0, 1, 2]")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(where, f"{len(seeds)} seeds; at most {MAX_SEEDS} are allowed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(where, f"seed {s!r} is not an integer")
        if not 0 <= s < SEED_LIMIT:
            raise ConfigError(where, f"seed {s} is outside [0, 2**63)")
    if len(set(seeds)) != len(seeds):
        dup = next(s for s in seeds if list(seeds).count(s) > 1)
        raise ConfigError(where, f"seed {dup} is repeated; seeds must be distinct")
    return [int(s) for s in seeds]


def check_seed_range(start: int, count: int, where: str) -> None:
    """A ``{start, count}`` range checked arithmetically before it is materialised."""
    if count == 0:
        raise ConfigError(f"{where}.count", "empty seed list; give at least one seed")
    if count < 0:
        raise ConfigError(f"{where}.count", "must be > 0")
    if count > MAX_SEEDS:
        raise ConfigError(f"{where}.count", f"{count} seeds; at most {MAX_SEEDS} are allowed")
    if start < 0 or start + count > SEED_LIMIT:
        raise ConfigError(where, f"seeds {start}..{start + count - 1} leave [0, 2**63)")


def parse_seeds(text: str, where: str = "--seeds") -> list[int]:
    """``0,1,2`` / ``0-9`` / ``0-4,7`` -> distinct seeds; the count is checked before ranges expand."""
    parts: list[tuple[int, int]] = []
    total = 0
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"([0-9]+)(?:\s*-\s*([0-9]+))?", part) if len(part) <= 80 else None
        if m is None:
            raise ConfigError(where, f"cannot read {part[:40]!r}; use e.g. 0,1,2 or 0-9 (non-negative)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise ConfigError(where, f"range {part!r} is empty; write it low-high, e.g. 0-9")
        if b >= SEED_LIMIT:
            raise ConfigError(where, f"seed {b} is outside [0, 2**63)")
        total += b - a + 1
        if total > MAX_SEEDS:
            raise ConfigError(where, f"more than {MAX_SEEDS} seeds; give fewer seeds per job")
        parts.append((a, b))
    if not parts:
        raise ConfigError(where, "empty seed list; give at least one seed, e.g. --seeds 0,1,2")
    seeds = [s for a, b in parts for s in range(a, b + 1)]
    return check_seeds(seeds, where)


def grid_size(grid: Mapping[str, Any], where: str) -> int:
    """The number of grid points (product of the list lengths), without expanding the grid."""
    n = 1
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.grid.{key}", "must be a non-empty list of values")
        n *= len(values)
    return n


def check_run_count(n_settings: int, n_seeds: int, where: str) -> None:
    """Refuse more than `max_runs()` runs (settings x seeds) in one scale, before anything is built."""
    cap = max_runs()
    runs = n_settings * n_seeds
    if runs > cap:
        raise ConfigError(
            where,
            f"{n_settings} settings x {n_seeds} seeds = {runs} runs, above the cap of {cap}; "
            "shrink the grid or raise the cap with LOP_MAX_RUNS (or --max-runs)",
        )


def check_sane_values(data: Any, where: str, *, skip: Iterable[str] = ("seeds",)) -> None:
    """Walk plain YAML data: integers within ±`MAX_INT`, floats finite and within ±`MAX_ABS_FLOAT`,
    step sizes (``lr``) at most `MAX_LR`; keys in `skip` (seeds, checked elsewhere) are not walked."""
    skipped = set(skip)
    stack: list[tuple[str, Any]] = [(where, data)]
    while stack:
        at, value = stack.pop()
        if isinstance(value, Mapping):
            for k, v in value.items():
                if str(k) in skipped:
                    continue
                key = str(k)
                sub = f"{at}{key}" if at.endswith(":") else f"{at}.{key}"
                if key.rsplit(".", 1)[-1] == "lr" and _is_number(v) and v > MAX_LR:
                    raise ConfigError(sub, f"step size {v!r} is implausible; use a value <= {MAX_LR}")
                if key.rsplit(".", 1)[-1] == "lr" and isinstance(v, list):
                    for x in v:
                        if _is_number(x) and x > MAX_LR:
                            raise ConfigError(sub, f"step size {x!r} is implausible; use a value <= {MAX_LR}")
                stack.append((sub, v))
        elif isinstance(value, list | tuple):
            stack.extend((f"{at}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if abs(value) > MAX_INT:
                raise ConfigError(at, f"{value} is implausibly large; values are limited to ±{MAX_INT:.0e}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigError(at, f"expected a finite number, got {value!r}")
            if abs(value) > MAX_ABS_FLOAT:
                raise ConfigError(
                    at, f"{value!r} is implausibly large; values are limited to ±{MAX_ABS_FLOAT:.0e}"
                )


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------
# Memory pre-flight
# ---------------------------------------------------------------------------------------------

BYTES_PER_PARAM = 4 * 4  # float32 weight + gradient + two optimiser states


def _widths(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def parameter_lower_bound(problem: Any) -> int:
    """A lower bound on a network's parameter count from its problem settings (0 when unknown).

    Fields read when present: ``hidden`` (int or list of layer sizes), ``target_hidden``, ``width``,
    ``depth``, ``n_slow``/``n_fast`` (SCR inputs). Input sizes are taken as small (>= 1) where unknown,
    so the bound never over-estimates.
    """
    get = lambda name, default=0: getattr(problem, name, default)  # noqa: E731
    n_in = max(1, int(get("n_slow", 0) or 0) + int(get("n_fast", 0) or 0))
    total = 0
    hidden = _widths(get("hidden", None))
    if hidden:
        sizes = [n_in, *hidden, 1]
        total += sum(a * b for a, b in itertools.pairwise(sizes))
    total += sum(w * (n_in + 1) for w in _widths(get("target_hidden", None)))
    width = _widths(get("width", None))
    depth = get("depth", 1)
    depth = depth if isinstance(depth, int) and not isinstance(depth, bool) and depth > 0 else 1
    for w in width:
        total += w * w * (depth - 1) + w
    return total


def check_memory(problem: Any, n_runs: int, limit_mb: float, where: str, what: str) -> None:
    """Refuse a job whose networks alone (`parameter_lower_bound` x runs x `BYTES_PER_PARAM`) exceed
    `limit_mb` (the job's declared ``mem_mb`` or the machine's memory)."""
    need = parameter_lower_bound(problem) * max(1, n_runs) * BYTES_PER_PARAM
    if need > limit_mb * 1024 * 1024:
        raise ConfigError(
            where,
            f"the networks of {n_runs} run(s) alone need about {need / 2**30:.3g} GiB, more than {what} "
            f"({limit_mb / 1024:.3g} GiB); reduce the layer sizes or the runs per job",
        )


def machine_memory_mb() -> float:
    """Physical memory of this machine in MiB (inf when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return math.inf


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------


def check_device(name: Any, where: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` that exists on this machine; else a `ConfigError`
    that names what is available."""
    import torch

    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    available = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n_gpu)] if n_gpu else [])
    if not isinstance(name, str):
        raise ConfigError(where, f"expected a device name, got {name!r}; available: {', '.join(available)}")
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d{1,4}))?", name)
    ok = m is not None and (m.group(2) is None or m.group(1) == "cuda")
    if ok and m is not None and m.group(1) == "cuda" and (n_gpu == 0 or int(m.group(2) or 0) >= n_gpu):
        ok = False
    if not ok:
        raise ConfigError(
            where, f"device {name[:40]!r} is not available here; available: {', '.join(available)}"
        )
    return name


# ---------------------------------------------------------------------------------------------
# The one YAML loader
# ---------------------------------------------------------------------------------------------

_BASE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE_LOADER):  # type: ignore[misc, valid-type]
    """SafeLoader that rejects duplicate keys and reads ``1e-3`` (YAML 1.2 style) as a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise _Duplicate(f"duplicate key {key!r} (line {line}); keep only one")
            except TypeError:
                raise _Duplicate(f"unhashable mapping key at line {key_node.start_mark.line + 1}") from None
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


class _Duplicate(Exception):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _node_size(root: yaml.Node, where: str) -> None:
    """Count nodes with aliases expanded (memoised, so a bomb is counted without being built); reject
    cycles, excessive depth and more than `MAX_YAML_NODES` expanded nodes."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(where, f"nested deeper than {MAX_YAML_DEPTH} levels; flatten the file")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise ConfigError(where, "a YAML alias refers to itself (recursive structure); remove it")
        on_path.add(key)
        n = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                n += size(child, depth + 1)
                if n > MAX_YAML_NODES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                n += size(k, depth + 1) + size(v, depth + 1)
                if n > MAX_YAML_NODES:
                    break
        on_path.discard(key)
        if n > MAX_YAML_NODES:
            raise ConfigError(
                where,
                f"expands to more than {MAX_YAML_NODES} values (YAML aliases/anchors); write it out plainly",
            )
        sizes[key] = n
        return n

    size(root, 0)


def _check_events(text: str, where: str) -> None:
    """Depth check on the event stream, before any node tree is built (deep nesting cannot recurse)."""
    depth = 0
    aliases = 0
    for event in yaml.parse(text, Loader=_BASE_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(where, f"nested deeper than {MAX_YAML_DEPTH} levels; flatten the file")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > 10_000:
                raise ConfigError(where, "more than 10000 YAML aliases; write the file out plainly")


def load_yaml_text(text: str, where: str) -> Any:
    """Parse YAML text with every guard of `load_yaml` except the file-level ones."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(where, f"larger than {MAX_YAML_BYTES // 2**20} MiB; this is not a params file")
    try:
        _check_events(text, where)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _node_size(node, where)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except _Duplicate as e:
        raise ConfigError(where, str(e)) from None
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise ConfigError(where, f"not valid YAML ({msg[:300]})") from None
    except RecursionError:
        raise ConfigError(where, f"nested deeper than {MAX_YAML_DEPTH} levels; flatten the file") from None
    except (ValueError, OverflowError) as e:  # e.g. a timestamp or number the constructor cannot build
        raise ConfigError(where, f"not valid YAML ({str(e)[:200]})") from None


def load_yaml(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Read a YAML file for lop (params, run files, figure registry): at most `MAX_YAML_BYTES`, UTF-8,
    no duplicate keys, depth <= `MAX_YAML_DEPTH`, at most `MAX_YAML_NODES` nodes after alias expansion.
    Any problem is a `ConfigError` naming the file."""
    path = Path(path)
    where = str(path)
    if "\x00" in where:
        raise ConfigError(where.replace("\x00", "\\0"), "the path contains a NUL byte")
    if not path.is_file():
        raise ConfigError(where, f"{what} not found")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(where, f"{size} bytes, larger than {MAX_YAML_BYTES // 2**20} MiB; not a {what}")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(where, f"cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(where, f"not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise ConfigError(where, "contains NUL bytes; not a text file")
    return load_yaml_text(text, where)


# ---------------------------------------------------------------------------------------------
# Bounded decompression
# ---------------------------------------------------------------------------------------------


def gunzip_capped(data: bytes, cap: int, where: str) -> bytes:
    """Decompress gzip `data` (all members) but stop with a `DataError` past `cap` output bytes."""
    out = bytearray()
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = d.decompress(rest, cap + 1 - len(out))
            out += chunk
            while not d.eof and len(out) <= cap and d.unconsumed_tail:
                out += d.decompress(d.unconsumed_tail, cap + 1 - len(out))
        except zlib.error as e:
            raise DataError(f"{where}: corrupt gzip ({e}); download the file again") from None
        if len(out) > cap:
            raise DataError(
                f"{where}: decompresses to more than {cap} bytes, larger than this format allows "
                "(a gzip bomb or the wrong file); download the file again"
            )
        if not d.eof:
            raise DataError(f"{where}: truncated gzip; download the file again")
        rest = d.unused_data
        while rest[:1] == b"\x00":  # trailing zero padding after the last member
            rest = rest[1:]
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Snakemake --config
# ---------------------------------------------------------------------------------------------

PATH_CONFIG_KEYS = ("params_dir", "figures", "results")  # --config values that become folders/files


def check_workflow_config(config: Mapping[str, Any]) -> None:
    """The safety checks on the pipeline's ``--config`` that its JSON schema cannot express; the schema
    (workflow/schemas/config.schema.yaml, `lop.workflow_config.check_config`, run first) is the one source
    of truth for the keys, their types and allowed values, so this holds no key list and ignores keys it
    does not check. Checked: the folders/files of `PATH_CONFIG_KEYS` are plain paths (no NUL, no newline);
    each name in ``experiments`` is a safe path component (`safe_component`: no ``..``, separators,
    at most 200 characters); ``device`` exists on this machine (`check_device`). Raises `ConfigError`."""
    if config.get("device") is not None:
        check_device(config["device"], "--config device")
    for key in PATH_CONFIG_KEYS:
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value or any(c in value for c in "\x00\n\r"):
            raise ConfigError(f"--config {key}", f"expected a plain path, got {str(value)[:40]!r}")
    exps = config.get("experiments")
    if exps is not None:
        names = exps.split(",") if isinstance(exps, str) else exps
        if not isinstance(names, list | tuple):
            raise ConfigError(
                "--config experiments", "expected names separated by commas, e.g. scr,permuted_mnist"
            )
        for name in names:
            safe_component(name, "--config experiments", "experiment name")
