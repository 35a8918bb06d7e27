"""The `replay` console command. A bare `replay --help` is answered from the conf files
without starting Hydra (whose help composes the config and scans every group, Hydra's own
included: about a second); anything else, `--help` with overrides included, goes to the Hydra
app in ``replay.app``."""

from __future__ import annotations

import sys
from pathlib import Path

from conf import conf_file

HELP_FLAGS = (["--help"], ["-h"])


def groups(conf: Path) -> dict[str, list[str]]:
    """Config group -> its options: the shipped conf/ folders and their yaml files."""
    found = {}
    for folder in sorted(p for p in conf.iterdir() if p.is_dir() and not p.name.startswith("__")):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            found[folder.name] = options
    return found


def own_keys(text: str) -> str:
    """The primary config's own top-level blocks, comments kept (not ``defaults`` or ``hydra``)."""
    kept, keep = [], False
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            keep = line.split(":", 1)[0] not in ("defaults", "hydra")
        if keep:
            kept.append(line)
    return "\n".join(kept).strip()


def fast_help() -> str:
    """Hydra's help layout: header, groups and options (the defaults marked), the primary
    config's own keys with their comments, footer."""
    import yaml

    conf = conf_file()
    text = (conf / "config.yaml").read_text()
    primary = yaml.safe_load(text)
    helpcfg = primary["hydra"]["help"]
    picked = {k: v for d in primary.get("defaults", []) if isinstance(d, dict) for k, v in d.items()}
    lines = [helpcfg["header"].rstrip(), "", "== Configuration groups ==",
             "Compose your configuration from those groups (group=option; the default in [brackets])", ""]
    for group, options in groups(conf).items():
        lines.append(f"{group}: " + ", ".join(f"[{o}]" if picked.get(group) == o else o for o in options))
    lines += ["", "== Config ==",
              "Override anything in the config (foo.bar=value). Below, the top-level keys; every",
              "group's keys are in the resolved config: replay --cfg job [overrides].", "",
              own_keys(text), "", helpcfg["footer"].rstrip()]
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:] in HELP_FLAGS:
        try:
            print(fast_help())
        except BrokenPipeError:  # `replay --help | head`
            sys.stdout = None
        return
    from replay.app import main as app

    app()


if __name__ == "__main__":
    main()
