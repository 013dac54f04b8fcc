"""Stateless, per-run random streams.

Every random number in `lop` is a pure function of ``(run seed, stream name, counter, index)``.
A batch of S runs draws ``[S, *shape]`` tensors whose row ``k`` depends only on ``seeds[k]``, so
a run gives the same numbers alone or inside any batch, and a resumed run needs no RNG state:
the counter (step, task, epoch number) is part of the trainer's state already.

Two backends give the same contract:

* **hash** (small draws): a counter-based generator built from the 32-bit ``lowbias32`` integer
  mixer (C. Wellons), evaluated with vectorised int64 tensor ops, two 32-bit key words per
  (seed, stream, counter). Identical on CPU and GPU.
* **torch** (draws of at least ``TORCH_BACKEND_MIN`` numbers per run): one ``torch.Generator`` per
  run, seeded from the same (seed, stream, counter) hash; a loop over runs that is negligible
  next to the size of each draw.

The backend is chosen from the per-run shape alone, never from the batch.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Sequence

import torch

MASK32 = 0xFFFFFFFF
TORCH_BACKEND_MIN = 1 << 15
_TWO_PI = 2.0 * math.pi


def _mix32_int(x: int) -> int:
    """lowbias32 on a Python int (the scalar twin of `_mix32`)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32) without int64 overflow."""
    c_lo, c_hi = c & 0xFFFF, c >> 16
    return (x * c_lo + (((x * c_hi) & 0xFFFF) << 16)) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on an int64 tensor holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def stream_id(name: str) -> int:
    """A stable 32-bit id of a stream name (crc32, identical across processes and versions)."""
    return zlib.crc32(name.encode("utf-8")) & MASK32


def _stream_words(seed: int, sid: int) -> tuple[int, int]:
    """Per-(seed, stream) words, cached by `RunStreams`."""
    s_lo, s_hi = seed & MASK32, (seed >> 32) & MASK32
    a1 = _mix32_int(_mix32_int(s_lo ^ 0x9E3779B9) ^ sid)
    a2 = _mix32_int(_mix32_int((s_hi + 0x85EBCA6B) & MASK32) ^ sid ^ a1)
    return a1, a2


def _counter_words(counter: int) -> tuple[int, int]:
    c_lo, c_hi = counter & MASK32, (counter >> 32) & MASK32
    return _mix32_int((c_lo + 0x632BE5AB) & MASK32), _mix32_int(c_hi ^ 0xC2B2AE35)


def key_words(seed: int, name: str, counter: int) -> tuple[int, int]:
    """Two 32-bit key words for one (seed, stream, counter) triple."""
    if seed < 0 or counter < 0:
        raise ValueError("seeds and counters must be non-negative")
    a1, a2 = _stream_words(seed, stream_id(name))
    c1, c2 = _counter_words(counter)
    w1 = _mix32_int(a1 ^ c1)
    return w1, _mix32_int(a2 ^ c2 ^ w1)


def torch_seed(seed: int, name: str, counter: int) -> int:
    """A 63-bit seed for a per-run `torch.Generator` (torch backend)."""
    w1, w2 = key_words(seed, name, counter)
    return ((w1 << 31) ^ w2) & ((1 << 63) - 1)


class RunStreams:
    """Random streams of a batch of runs, one row per run seed."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("RunStreams needs at least one seed")
        self.device = torch.device(device)
        if any(s < 0 for s in self.seeds):
            raise ValueError("seeds must be non-negative")
        self._index_cache: dict[int, torch.Tensor] = {}
        self._stream_cache: dict[str, torch.Tensor] = {}

    @property
    def n(self) -> int:
        return len(self.seeds)

    def subset(self, rows: Sequence[int]) -> RunStreams:
        """The streams of runs `rows` of this batch (same class and stream names): each run draws the
        same numbers here as in the full batch, since a run's draws depend on its seed only."""
        out = copy.copy(self)
        out.seeds = [self.seeds[r] for r in rows]
        out._index_cache, out._stream_cache = {}, {}
        return out

    # ---- raw 32-bit words -------------------------------------------------------------
    def _keys(self, name: str, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key words ``[S, 1]`` for one (stream, counter); equals `key_words` per seed."""
        if counter < 0:
            raise ValueError("counters must be non-negative")
        base = self._stream_cache.get(name)
        if base is None:
            sid = stream_id(name)
            words = [_stream_words(s, sid) for s in self.seeds]
            base = torch.tensor(words, dtype=torch.int64, device=self.device)
            self._stream_cache[name] = base
        c1, c2 = _counter_words(counter)
        w1 = _mix32(base[:, 0:1] ^ c1)
        return w1, _mix32(base[:, 1:2] ^ c2 ^ w1)

    def _index(self, n: int) -> torch.Tensor:
        idx = self._index_cache.get(n)
        if idx is None:
            idx = torch.arange(n, dtype=torch.int64, device=self.device)
            self._index_cache[n] = idx
        return idx

    def bits(self, name: str, counter: int, n: int) -> torch.Tensor:
        """``[S, n]`` int64 tensor of uniform 32-bit words (hash backend)."""
        k1, k2 = self._keys(name, counter)
        x = _mix32(self._index(n).unsqueeze(0) ^ k1)
        return _mix32((x + k2) & MASK32)

    def _torch_draw(self, name: str, counter: int, n: int, dtype: torch.dtype, fill: str) -> torch.Tensor:
        """``[S, n]`` standard uniform/normal numbers from one seeded `torch.Generator` per run."""
        out = torch.empty((self.n, n), dtype=dtype, device=self.device)
        for k, s in enumerate(self.seeds):
            g = torch.Generator(device=self.device).manual_seed(torch_seed(s, name, counter))
            getattr(out[k], fill)(generator=g)
        return out

    # ---- distributions ----------------------------------------------------------------
    def uniform(
        self,
        name: str,
        counter: int,
        shape: Sequence[int],
        low: float | torch.Tensor = 0.0,
        high: float | torch.Tensor = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``[S, *shape]`` uniform on [low, high); low/high may be ``[S]`` tensors."""
        shape = tuple(int(d) for d in shape)
        n = math.prod(shape)
        if n >= TORCH_BACKEND_MIN:
            out = self._torch_draw(name, counter, n, dtype, "uniform_")
        else:
            out = (self.bits(name, counter, n) >> 8).to(dtype) * (1.0 / (1 << 24))
        out = out.view(self.n, *shape)
        return _affine(out, low, high - low)

    def normal(
        self,
        name: str,
        counter: int,
        shape: Sequence[int],
        std: float | torch.Tensor = 1.0,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``[S, *shape]`` Gaussian N(0, std²); std may be an ``[S]`` tensor."""
        shape = tuple(int(d) for d in shape)
        n = math.prod(shape)
        if n >= TORCH_BACKEND_MIN:
            out = self._torch_draw(name, counter, n, dtype, "normal_")
        else:
            w = self.bits(name, counter, 2 * n)
            u1 = ((w[:, :n] >> 8) + 1).to(dtype) * (1.0 / (1 << 24))  # (0, 1]
            u2 = (w[:, n:] >> 8).to(dtype) * (1.0 / (1 << 24))
            out = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(_TWO_PI * u2)
        out = out.view(self.n, *shape)
        return _affine(out, 0.0, std)

    def randint(self, name: str, counter: int, shape: Sequence[int], high: int) -> torch.Tensor:
        """``[S, *shape]`` integers uniform on [0, high) (high < 2**24)."""
        if not 0 < high < (1 << 24):
            raise ValueError("randint needs 0 < high < 2**24")
        u = self.uniform(name, counter, shape, dtype=torch.float64)
        return torch.clamp((u * high).to(torch.int64), max=high - 1)

    def permutation(self, name: str, counter: int, n: int) -> torch.Tensor:
        """``[S, n]`` int64: an independent uniform random permutation of range(n) per run."""
        keys = self.bits(name, counter, n)
        return torch.argsort(keys, dim=1, stable=True)

    def bernoulli(
        self, name: str, counter: int, shape: Sequence[int], p: float | torch.Tensor = 0.5
    ) -> torch.Tensor:
        """``[S, *shape]`` bool with P(True) = p (p may be ``[S]``)."""
        u = self.uniform(name, counter, shape)
        if isinstance(p, torch.Tensor):
            p = p.view(-1, *([1] * len(shape)))
        return u < p

    def select(self, index: Sequence[int]) -> RunStreams:
        """Streams of a subset of the runs (same numbers as in the full batch)."""
        return RunStreams([self.seeds[i] for i in index], self.device)


def _affine(x: torch.Tensor, low: float | torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """low + scale * x with [S] tensors broadcast over trailing dims."""

    def _b(v: float | torch.Tensor) -> float | torch.Tensor:
        if isinstance(v, torch.Tensor) and v.dim() == 1:
            return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return v

    scale_b, low_b = _b(scale), _b(low)
    if not (isinstance(scale_b, float | int) and scale_b == 1.0):
        x = x * scale_b
    if not (isinstance(low_b, float | int) and low_b == 0.0):
        x = x + low_b
    return x
