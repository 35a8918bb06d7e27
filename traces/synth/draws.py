"""Random draws shared by the generators; every draw takes the caller's numpy Generator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def lognormal(rng: np.random.Generator, spec: Mapping[str, Any], size: int | None = None):
    """Lognormal draw given by its median and sigma (of the log), clipped to [min, max]."""
    x = spec["median"] * np.exp(spec["sigma"] * rng.standard_normal(size))
    return np.clip(x, spec.get("min", 0), spec.get("max", np.inf))


def lognormal_int(rng: np.random.Generator, spec: Mapping[str, Any], size: int | None = None):
    return np.rint(lognormal(rng, spec, size)).astype(np.int64)


def uniform_int(rng: np.random.Generator, bounds: list[int] | tuple[int, int], size=None):
    """Integer uniform on the closed range [lo, hi]."""
    lo, hi = bounds
    return rng.integers(lo, hi + 1, size=size)


def random_keys(rng: np.random.Generator, size: int) -> list[int]:
    """Fresh 64-bit content keys (as Python ints, the form Chain stores)."""
    return rng.integers(0, 2**63, size=size, dtype=np.int64).tolist()


def session_starts(rng: np.random.Generator, n: int, arrival: Mapping[str, Any]) -> np.ndarray:
    """Start times of n sessions, sorted.

    ``process: poisson`` draws exponential gaps at ``rate_per_s``; ``process: spread`` places
    starts uniformly over ``duration_s``. An optional 24-entry ``diurnal`` profile (relative
    weights per hour) warps the times so the density follows it (a time-warped Poisson process).
    """
    process = arrival["process"]
    if process == "poisson":
        starts = np.cumsum(rng.exponential(1.0 / arrival["rate_per_s"], size=n))
        starts -= starts[0] if n else 0.0
    elif process == "spread":
        starts = np.sort(rng.uniform(0.0, arrival["duration_s"], size=n))
    else:
        raise ValueError(f"arrival.process must be 'poisson' or 'spread', got {process!r}")
    diurnal = arrival.get("diurnal")
    if diurnal:
        starts = _diurnal_warp(starts, np.asarray(diurnal, dtype=float))
    return starts


def _diurnal_warp(times: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Map uniform-intensity times onto a day whose hourly intensity follows ``weights``.

    A homogeneous process on [0, T] becomes one with the same count and that daily shape: a time
    at fraction f of its day lands where the profile's cumulative share reaches f.
    """
    day = 86_400.0
    hours = len(weights)
    cum = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    edges = np.linspace(0.0, day, hours + 1)
    days, frac = np.divmod(times, day)
    return days * day + np.interp(frac / day, cum, edges)
