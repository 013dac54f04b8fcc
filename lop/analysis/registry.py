"""The figure registry ``params/figures.yaml``: which runs and metrics make each paper panel.

Each figure names its experiment, the band over seeds (``se``: mean ± 1 s.e.; ``bootstrap95``: RL) and
its panels; a panel names a metric (an exact name or a glob such as ``dead_units/*``, combined over
layers), the binning of the x axis, the lines (method + hyperparameter selection) and the paper's
published values as reference marks. See docs/pipeline.md ("Figure registry") for the full schema.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lop.config import OMIT_IF_DEFAULT, check, from_dict, to_dict
from lop.errors import ConfigError
from lop.limits import load_yaml

DEFAULT_REGISTRY = Path("params/figures.yaml")


@dataclass(frozen=True)
class LineSpec:
    """One line: the runs of ``method`` whose setting matches ``where`` (or ``setting_id``)."""

    label: str
    method: str
    where: dict[str, Any] = field(default_factory=dict)
    setting_id: str | None = None
    color: str | None = None
    linestyle: str = "-"
    x_scale: float = 1.0  # this line's steps -> the panel's x units (tasks -> examples)
    scales: tuple[str, ...] = ()  # drawn only at these scales (empty: every scale)

    def at(self, scale: str) -> bool:
        """Whether this line belongs to the figure at `scale`."""
        return not self.scales or scale in self.scales


@dataclass(frozen=True)
class ReferenceSpec:
    """A published value: a dotted horizontal line at ``y``, and at paper scale a marker at ``(x, y)``."""

    y: float
    label: str
    x: float | None = None
    line: str | None = None  # colour it like the line with this label


@dataclass(frozen=True)
class AxisSpec:
    """Axis label, a multiplier applied to the data (e.g. 100 for fractions -> %), limits, log scale."""

    label: str
    scale: float = 1.0
    lim: tuple[float, float] | None = None
    log: bool = False


@dataclass(frozen=True)
class BinSpec:
    """Bins of ``width`` steps (a number, or per scale with a ``default``) reduced per seed (`bin_steps`)."""

    width: int | dict[str, int] | None = None
    reduce: Literal["mean", "max", "min", "last"] = "mean"
    edge: Literal["left", "right"] = "left"  # steps are 0-based indices (left) or counts (right)

    def width_for(self, scale: str) -> int | None:
        if isinstance(self.width, dict):
            return self.width.get(scale, self.width.get("default"))
        return self.width

    def validate(self) -> list[tuple[str, str]]:
        widths = self.width.values() if isinstance(self.width, dict) else [self.width]
        return check(all(w is None or w > 0 for w in widths), "width", "bin widths must be > 0")


@dataclass(frozen=True)
class PanelSpec:
    """One axes of a figure."""

    title: str
    metric: str
    y: AxisSpec
    x: AxisSpec = AxisSpec(label="Step")
    combine: Literal["mean", "sum"] = "mean"  # over the metrics a glob matches (e.g. layers)
    bin: BinSpec = BinSpec()
    lines: tuple[LineSpec, ...] = ()
    methods: tuple[str, ...] = ()  # with no `lines`: one line per setting of these methods (all if empty)
    relative_to: LineSpec | None = None  # divide by this line's value, paired by seed and x
    reference: tuple[ReferenceSpec, ...] = ()
    titles: dict[str, str] = field(default_factory=dict)  # per-scale title (the scale's real numbers)
    scales: tuple[str, ...] = ()  # drawn only at these scales (empty: every scale)
    # "lines": the metric over steps; "matrix": the mean accuracy matrix R[i, j] of the panel's one line
    # (metric `test_accuracy/task_*`); "bars": the metric's last value per line (references with `line`
    # are drawn as markers on that line's bar)
    kind: Literal["lines", "matrix", "bars"] = field(default="lines", metadata=OMIT_IF_DEFAULT)
    # where the legend goes (matplotlib's `loc`); None: matplotlib's "best", which can only pick the
    # least covered corner, so a panel whose lines fill every corner names a free one
    legend: (
        Literal[
            "upper left", "upper right", "lower left", "lower right", "center left", "center right",
            "upper center", "lower center",
        ]
        | None
    ) = field(default=None, metadata=OMIT_IF_DEFAULT)

    def validate(self) -> list[tuple[str, str]]:
        scales = {s for ln in self.lines for s in ln.scales} or {""}
        dup: list[str] = []
        for scale in scales:  # a label is unique among the lines drawn at each scale
            labels = [ln.label for ln in self.lines if not scale or ln.at(scale)]
            dup += [lab for lab in labels if labels.count(lab) > 1 and lab not in dup]
        dup = sorted(set(dup))
        return (
            check(not dup, "lines", f"duplicate line label(s): {', '.join(dup)}")
            + check(not (self.lines and self.methods), "methods", "give either `lines` or `methods`, not both")
            + check(self.kind != "matrix" or len(self.lines) == 1, "lines", "a matrix panel shows exactly one line")
        )

    def matches(self, metric: str) -> bool:
        return fnmatch.fnmatchcase(metric, self.metric)

    def title_for(self, scale: str) -> str:
        """The title at `scale`: its entry in `titles`, else `title` (the paper's)."""
        return self.titles.get(scale, self.title)

    def at(self, scale: str) -> bool:
        """Whether this panel is drawn at `scale`."""
        return not self.scales or scale in self.scales

    def lines_at(self, scale: str) -> tuple[LineSpec, ...]:
        """The lines drawn at `scale`."""
        return tuple(ln for ln in self.lines if ln.at(scale))


@dataclass(frozen=True)
class FigureSpec:
    """One paper figure (or panel group), drawn from one experiment's aggregate."""

    title: str
    experiment: str
    panels: tuple[PanelSpec, ...]
    band: Literal["se", "bootstrap95", "none"] = "se"
    caption: str | None = None  # file under workflow/report/, default <figure id>.rst
    ncols: int = 3
    paper: str = ""  # which paper figure this reproduces, e.g. "Fig. 1b"
    titles: dict[str, str] = field(default_factory=dict)  # per-scale title (the scale's real numbers)
    notes: dict[str, str] = field(default_factory=dict)  # per-scale one-sentence note under the title

    def validate(self) -> list[tuple[str, str]]:
        return check(len(self.panels) > 0, "panels", "a figure needs at least one panel") + check(
            self.ncols > 0, "ncols", "must be > 0"
        )

    def title_for(self, scale: str) -> str:
        """The title at `scale`: its entry in `titles`, else `title` (the paper's)."""
        return self.titles.get(scale, self.title)

    def panels_at(self, scale: str) -> tuple[PanelSpec, ...]:
        """The panels drawn at `scale` (a panel with no data at a scale is dropped there, not left empty)."""
        return tuple(p for p in self.panels if p.at(scale))


@dataclass(frozen=True)
class StyleSpec:
    """Style shared by every figure (editing it rebuilds every figure)."""

    theme: str = "ticks"
    context: str = "paper"
    palette: str = "colorblind"
    font_scale: float = 1.0
    panel_size: tuple[float, float] = (3.4, 2.6)
    dpi: int = 150
    band_alpha: float = 0.25


@dataclass(frozen=True)
class Registry:
    """The whole ``figures.yaml``."""

    figures: dict[str, FigureSpec]
    style: StyleSpec = StyleSpec()
    version: int = 1

    def for_experiments(self, experiments: set[str] | list[str]) -> dict[str, FigureSpec]:
        """The figures whose experiment exists (others are skipped, not errors)."""
        return {k: f for k, f in self.figures.items() if f.experiment in experiments}

    def fingerprint(self, figure_id: str) -> str:
        """Canonical JSON of one figure + the shared style: what a figure's output depends on."""
        spec = self.figures[figure_id]
        return json.dumps({"style": to_dict(self.style), "figure": to_dict(spec)}, sort_keys=True)


def load_registry(path: str | Path = DEFAULT_REGISTRY) -> Registry:
    """Read and validate the figure registry; raises `ConfigError` naming file and key."""
    path = Path(path)
    data = load_yaml(path, "figure registry")
    try:
        registry = from_dict(Registry, data)
    except ConfigError as e:
        raise ConfigError(str(path), str(e)) from e
    for fid in registry.figures:
        if not fid.replace("_", "").isalnum():
            raise ConfigError(str(path), f"figures.{fid}: figure ids may hold only letters, digits and _")
    return registry
