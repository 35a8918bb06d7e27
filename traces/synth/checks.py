"""Range checks of a generator's knobs, so a bad value is one ConfigError line naming the key
instead of a ZeroDivisionError, an endless loop or a silently odd trace.

The rules go by the knob's name and shape, so they cover both generators' yaml files and any
knob added later with a conventional name: counts (sessions, users, ...) >= 1, probabilities in
[0, 1], rates > 0, token counts and durations >= 0, [lo, hi] ranges ordered, lognormal specs
{median > 0, sigma >= 0, 0 <= min <= max}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from traces.errors import ConfigError

COUNTS = {"sessions", "users", "agent_versions", "types", "block_size"}  # integers >= 1
POSITIVE = {"duration_s", "window_tokens", "threshold_tokens"}  # numbers > 0


def check_config(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError for the first knob out of its range."""
    _walk(cfg, "")
    compaction = cfg.get("compaction")
    if isinstance(compaction, Mapping) and compaction.get("threshold_tokens", 0) >= compaction.get(
            "window_tokens", math.inf):
        raise ConfigError(f"trace knob compaction.threshold_tokens must be below compaction.window_tokens "
                          f"({compaction['window_tokens']}), got {compaction['threshold_tokens']}")
    process = (cfg.get("arrival") or {}).get("process")
    if process not in (None, "poisson", "spread"):
        raise ConfigError(f"trace knob arrival.process must be 'poisson' or 'spread', got {process!r}")


def _fail(key: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"trace knob {key} must be {rule}, got {value!r}")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise _fail(key, "a number", value)
    return value


def _walk(node: Mapping[str, Any], prefix: str) -> None:
    for name, value in node.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            if "median" in value and "sigma" in value:
                _lognormal(key, value)
            else:
                _walk(value, f"{key}.")
        elif value is not None:
            _leaf(key, str(name), value)


def _lognormal(key: str, spec: Mapping[str, Any]) -> None:
    if _number(f"{key}.median", spec["median"]) <= 0:
        raise _fail(f"{key}.median", "> 0", spec["median"])
    if _number(f"{key}.sigma", spec["sigma"]) < 0:
        raise _fail(f"{key}.sigma", ">= 0", spec["sigma"])
    low, high = spec.get("min", 0), spec.get("max", math.inf)
    if _number(f"{key}.min", low) < 0:
        raise _fail(f"{key}.min", ">= 0", low)
    if _number(f"{key}.max", high) < low:
        raise _fail(f"{key}.max", f">= its min ({low})", high)


def _leaf(key: str, name: str, value: Any) -> None:
    if name == "diurnal":
        weights = [_number(key, w) for w in value]
        if min(weights, default=-1) < 0 or sum(weights) <= 0:
            raise _fail(key, "non-negative weights with a positive sum", value)
    elif name.endswith("_probs"):
        probs = [_number(key, p) for p in value]
        if any(not 0 <= p <= 1 for p in probs) or abs(sum(probs) - 1) > 1e-6:
            raise _fail(key, "probabilities in [0, 1] that sum to 1", value)
    elif isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise _fail(key, "a range [lo, hi]", value)
        low, high = (_number(key, v) for v in value)
        floor = 0 if name.endswith("_tokens") else 1
        if not floor <= low <= high:
            raise _fail(key, f"a range [lo, hi] with {floor} <= lo <= hi", value)
    elif isinstance(value, str) or name == "seed":
        return
    elif name in COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(key, "an integer >= 1", value)
    elif name.endswith("probability"):
        if not 0 <= _number(key, value) <= 1:
            raise _fail(key, "a probability in [0, 1]", value)
    elif name.endswith("_per_s") or name in POSITIVE:
        if not _number(key, value) > 0 or math.isinf(value):
            raise _fail(key, "a finite number > 0", value)
    elif name.endswith("_tokens") or name.endswith("_s"):
        if not 0 <= _number(key, value) < math.inf:
            raise _fail(key, "a finite number >= 0", value)
