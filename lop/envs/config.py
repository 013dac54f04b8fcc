"""Settings of the RL environments (docs/protocols/ppo.md), validated before any simulator is built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lop.errors import ConfigError

ENV_NAMES: tuple[str, ...] = ("ant", "slippery_ant", "hopper", "walker2d")
FRICTION_MIX: tuple[str, ...] = ("all", "floor", "max")


@dataclass(frozen=True)
class EnvConfig:
    """One environment of docs/protocols/ppo.md.

    * ``name``: ``ant`` | ``slippery_ant`` | ``hopper`` | ``walker2d`` (Gymnasium ``*-v5`` dynamics and
      rewards; Ant pinned to ctrl cost 0.5, contact cost 5e-4, healthy z in (0.2, 1.0)).
    * ``max_episode_steps``: time limit (truncation), 1,000 in the paper.
    * ``friction_low``, ``friction_high``: slippery Ant's log-uniform friction range, [0.02, 2].
    * ``change_every``: slippery Ant draws a new friction at the first episode end once at least this
      many env steps have passed since the last change (2M: 10 frictions in 20M steps).
    * ``friction_mix``: where the drawn sliding friction f is written, i.e. which friction the contacts
      see. MuJoCo gives a contact the element-wise *maximum* of its two geoms' frictions.
      ``"all"`` (default, the reference code's behaviour): f is written to every geom, as the reference's
      edit of the *default* ``<geom>`` friction of ant.xml (inherited by the floor and every Ant geom),
      so every contact has sliding friction max(f, f) = f. ``"floor"``: f is written to the floor only
      and the floor gets the highest geom priority, so floor contacts use the floor's friction f (the
      same trajectories as ``"all"``: only floor–leg contacts occur). ``"max"``: f is written to the
      floor only; contacts take max(f, 1.0) with the legs' 1.0, so every draw below 1 (85.7% of
      log-uniform draws on [0.02, 2]) has no effect — a non-slippery variant kept for comparison.
    * ``clip_actions``: clip actions to the action box before the simulator sees them (the reference
      passes unclipped actions: MuJoCo clamps the torque, the control cost sees the raw action).
    * ``sim_kwargs``: extra keyword arguments of the Gymnasium env class (e.g.
      ``{"contact_cost_weight": 0.0, "include_cfrc_ext_in_observation": False}``).
    """

    name: str = "ant"
    max_episode_steps: int = 1000
    friction_low: float = 0.02
    friction_high: float = 2.0
    change_every: int = 2_000_000
    friction_mix: str = "all"
    clip_actions: bool = False
    sim_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def slippery(self) -> bool:
        return self.name == "slippery_ant"

    def validate(self) -> None:
        """Raise `ConfigError` naming the key of the first invalid setting."""
        if self.name not in ENV_NAMES:
            raise ConfigError("env.name", f"unknown environment {self.name!r}; use one of {list(ENV_NAMES)}")
        _positive_int("env.max_episode_steps", self.max_episode_steps)
        _positive_int("env.change_every", self.change_every)
        for key, v in (("env.friction_low", self.friction_low), ("env.friction_high", self.friction_high)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ConfigError(key, f"must be a finite number > 0, got {v!r}")
        if self.friction_low >= self.friction_high:
            raise ConfigError(
                "env.friction_low",
                f"must be below env.friction_high ({self.friction_low!r} >= {self.friction_high!r})",
            )
        if self.friction_mix not in FRICTION_MIX:
            raise ConfigError(
                "env.friction_mix", f"must be one of {list(FRICTION_MIX)}, got {self.friction_mix!r}"
            )
        if not isinstance(self.clip_actions, bool):
            raise ConfigError("env.clip_actions", f"must be true or false, got {self.clip_actions!r}")
        if not isinstance(self.sim_kwargs, Mapping) or not all(isinstance(k, str) for k in self.sim_kwargs):
            raise ConfigError("env.sim_kwargs", "must be a mapping of keyword names to values")


def _positive_int(key: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(key, f"must be a positive integer, got {v!r}")
