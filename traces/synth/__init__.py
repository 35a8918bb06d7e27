"""Synthetic trace generators, registered by name, configured by conf/trace/<name>.yaml."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from conf import conf_file
from traces.io import TraceWriter
from traces.schema import TraceError, TraceMeta
from traces.synth import coding_agent, email_drafting
from traces.synth.checks import check_config

GENERATORS: dict[str, Callable[..., None]] = {
    "coding_agent": coding_agent.generate,
    "email_drafting": email_drafting.generate,
}


def load_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The generator's yaml with ``key=value`` overrides; unknown keys are an error."""
    if name not in GENERATORS:
        raise TraceError(f"unknown generator {name!r}; choose one of {sorted(GENERATORS)}")
    text = conf_file("trace", f"{name}.yaml").read_text()
    cfg = OmegaConf.create(text)
    OmegaConf.set_struct(cfg, True)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise TraceError(f"override {item!r} is not of the form key=value")
        old = OmegaConf.select(cfg, key, default=_MISSING)
        if old is _MISSING:
            raise TraceError(f"override {item!r}: no knob {key!r} in conf/trace/{name}.yaml")
        try:
            value = yaml.safe_load(text) if text else text
        except yaml.YAMLError:
            value = text
        if not _same_kind(old, value):
            raise TraceError(f"override {item!r}: expected {_kind(old)}, got {text!r}")
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as exc:
            raise TraceError(f"override {item!r}: {str(exc).splitlines()[0]}") from None
    return cfg


_MISSING = object()


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, DictConfig):
        return "a mapping {key: value, ...}"
    if value is None:
        return "any value"
    return f"a value like {OmegaConf.to_container(value) if hasattr(value, '_content') else value!r}"


def _same_kind(old: Any, new: Any) -> bool:
    """Whether an override keeps the knob's type (ints may stand for floats; null is free)."""
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    if isinstance(old, int):
        return isinstance(new, int)
    if isinstance(old, DictConfig):
        return isinstance(new, dict)
    if isinstance(old, str):
        return isinstance(new, str)
    return isinstance(new, list)


def generate(cfg: Mapping[str, Any], out: str | Path, progress=None) -> int:
    """Write a synthetic trace; returns the number of requests written. Knobs out of range are
    a ConfigError naming the key (``checks.check_config``)."""
    cfg_dict = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    check_config(cfg_dict)
    meta = TraceMeta(block_size=int(cfg_dict["block_size"]),
                     source={"generator": cfg_dict["generator"], "config": cfg_dict})
    try:
        with TraceWriter(out, meta) as writer:
            GENERATORS[cfg_dict["generator"]](cfg_dict, writer, progress)
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"generator {cfg_dict.get('generator')}: bad configuration ({exc})") from None
    return writer.rows_written
