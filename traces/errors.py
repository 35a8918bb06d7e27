"""The errors the `traces` command prints as one line; kept free of heavy imports so the command
can catch them without loading pyarrow or polars."""

from __future__ import annotations


class TraceError(Exception):
    """A problem with a trace file that the user must fix; printed as one line, never a traceback."""


class ConfigError(TraceError, ValueError):
    """A generator knob out of its range; the message names the key."""
