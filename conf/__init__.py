"""The configuration files (Hydra's config module, and the files the `traces` command reads)."""

from pathlib import Path


def conf_file(*parts: str) -> Path:
    """A file under conf/. Not importlib.resources: its import is ~14 ms of every `traces
    import`, and this package is always a folder on disk (installed or editable)."""
    return Path(__file__).parent.joinpath(*parts)
