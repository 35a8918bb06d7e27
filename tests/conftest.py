"""Shared fixtures: the shipped config groups, read as plain dicts."""

from importlib import resources

import pytest
from omegaconf import OmegaConf


def conf(group: str, name: str) -> dict:
    """A config group file as a dict, parsed as Hydra parses it (interpolations left as text)."""
    text = resources.files("conf").joinpath(group, f"{name}.yaml").read_text()
    return OmegaConf.to_container(OmegaConf.create(text), resolve=False)


@pytest.fixture
def load_conf():
    return conf
