"""The PPO agent of docs/protocols/ppo.md, seed-batched: a Gaussian policy and a value function.

* policy: ``obs -> 256 -> 256 -> act`` ReLU MLP giving the action mean, plus a state-independent
  log standard deviation ``log_std [S, A]`` (initialised at 0, i.e. σ = 1);
* value:  ``obs -> 256 -> 256 -> 1`` ReLU MLP;
* both LeCun-uniform weights (U(±sqrt(3 / fan_in))) and zero biases, drawn from `lop.rng` streams
  prefixed ``policy/`` and ``value/``, so the two nets never share a draw and a run's initial
  parameters depend only on its seed.

All tensors carry the leading run axis S (`lop.nets.mlp.BatchedMLP`); one optimiser updates the flat
buffer `GaussianAgent.flat` of which `parameters()` (policy, log-std, value) are views.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from lop.nets.mlp import BatchedMLP, ForwardCache
from lop.nets.units import UnitLayer
from lop.rl.ppo_math import gaussian_log_prob
from lop.rng import RunStreams


class PrefixedStreams(RunStreams):
    """`RunStreams` whose uniform/normal stream names get a prefix (e.g. ``"value/"``).

    Lets two networks built by the same code (`BatchedMLP` draws ``"init/w{layer}"``) use distinct,
    still batch-independent streams.
    """

    def __init__(self, base: RunStreams, prefix: str) -> None:
        super().__init__(base.seeds, base.device)
        self.prefix = prefix

    def uniform(self, name: str, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        return super().uniform(self.prefix + name, *args, **kwargs)

    def normal(self, name: str, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        return super().normal(self.prefix + name, *args, **kwargs)


class GaussianAgent:
    """Policy net + log-std + value net of a batch of S runs (docs/protocols/ppo.md).

    All parameters live in one flat ``[S, P]`` tensor `flat` (order: policy w0, b0, w1, b1, ...,
    log-std, value w0, b0, ...); the networks' weights, biases and `log_std` are views of it. One
    optimiser step over `flat` then costs a handful of tensor ops instead of a handful per parameter,
    and `BatchedOptimizer.state_views` maps any of those views (as CBP/ReDo use them) onto the
    optimiser state. Gradients come from the nets' hand-written backward (`lop.rl.ppo`), laid out
    like `flat` by `flatten`.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        streams: RunStreams,
        log_std_init: float = 0.0,
        activation: str = "relu",
    ) -> None:
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        sizes = [self.obs_dim, *(int(h) for h in hidden)]
        self.policy = BatchedMLP(
            [*sizes, self.act_dim], activation, PrefixedStreams(streams, "policy/"), init="lecun_uniform"
        )
        self.value = BatchedMLP(
            [*sizes, 1], activation, PrefixedStreams(streams, "value/"), init="lecun_uniform"
        )
        log_std = torch.full((streams.n, self.act_dim), float(log_std_init), device=streams.device)
        initial = [*self.policy.parameters(), log_std, *self.value.parameters()]
        s = streams.n
        self.flat = torch.cat([t.reshape(s, -1) for t in initial], 1)
        views, start = [], 0
        for t in initial:
            n = t[0].numel()
            views.append(self.flat[:, start : start + n].view(t.shape))
            start += n
        n_pol = len(self.policy.weights)
        self.policy.weights[:] = views[0 : 2 * n_pol : 2]
        self.policy.biases[:] = views[1 : 2 * n_pol : 2]
        self.log_std = views[2 * n_pol]
        self.value.weights[:] = views[2 * n_pol + 1 :: 2]
        self.value.biases[:] = views[2 * n_pol + 2 :: 2]
        self._np_layers: list[tuple[np.ndarray, np.ndarray]] | None = None  # numpy views for `act_numpy`

    # ---- parameters -----------------------------------------------------------------------------
    def parameters(self) -> list[torch.Tensor]:
        """Views of `flat`: policy weights/biases, log-std, value weights/biases (the `flat` order)."""
        return [*self.policy.parameters(), self.log_std, *self.value.parameters()]

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tensors shaped like `parameters()` (e.g. their gradients) as one ``[S, P]`` tensor like `flat`."""
        s = self.flat.shape[0]
        return torch.cat([t.reshape(s, -1) for t in tensors], 1)

    def unit_layers(self) -> tuple[list[UnitLayer], list[UnitLayer]]:
        """Hidden layers of (policy, value) as `UnitLayer`s named ``policy/layer1``, ``value/layer1``, ..."""
        return (
            [dataclasses.replace(u, name=f"policy/{u.name}") for u in self.policy.unit_layers()],
            [dataclasses.replace(u, name=f"value/{u.name}") for u in self.value.unit_layers()],
        )

    # ---- forward --------------------------------------------------------------------------------
    def act(self, obs: torch.Tensor, noise: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
        """Sample a = μ(s) + σ·ε for obs ``[S, D]`` and standard-normal ``noise [S, A]``; returns ``[S, A]``
        (``std`` = exp(log_std) if the caller has it already)."""
        mean, _ = self.policy.forward(obs.unsqueeze(1))
        return torch.addcmul(mean[:, 0], self.log_std.exp() if std is None else std, noise)

    def act_numpy(self, obs: np.ndarray, noise: np.ndarray, std: np.ndarray) -> np.ndarray:
        """`act` for CPU agents in numpy (fewer, cheaper calls per env step than torch at batch 1):
        obs ``[S, D]``, noise ``[S, A]``, std ``[S, A]`` float32 -> ``[S, A]``; non-finite -> 0.

        Reads the live parameters through numpy views of `flat`. Each run's action comes from its own
        rows only, so it does not depend on the batch.
        """
        if self._np_layers is None:
            pol = self.policy
            self._np_layers = [
                (w.numpy().transpose(0, 2, 1), b.numpy()[:, None, :]) for w, b in zip(pol.weights, pol.biases)
            ]
        h = obs[:, None, :]
        last = len(self._np_layers) - 1
        for layer, (wt, b) in enumerate(self._np_layers):
            h = np.matmul(h, wt)
            h += b
            if layer < last:
                np.maximum(h, 0.0, out=h)
        action = h[:, 0] + std * noise
        return np.nan_to_num(action, copy=False, nan=0.0, posinf=0.0, neginf=0.0)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ForwardCache]:
        """(log π(a|s) ``[S, B]``, policy forward cache) for obs ``[S, B, D]``, actions ``[S, B, A]``."""
        mean, cache = self.policy.forward(obs)
        return gaussian_log_prob(mean, self.log_std, actions), cache

    def values(self, obs: torch.Tensor) -> tuple[torch.Tensor, ForwardCache]:
        """(V(s) ``[S, B]``, value forward cache) for obs ``[S, B, D]``."""
        v, cache = self.value.forward(obs)
        return v[..., 0], cache

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"flat": self.flat}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        src = state["flat"]
        if tuple(src.shape) != tuple(self.flat.shape):
            raise ValueError(f"agent parameters {list(src.shape)} do not fit {list(self.flat.shape)}")
        self.flat.copy_(src)
