"""Claude Code transcripts: JSONL under ~/.claude/projects/<project>/<sessionId>.jsonl (also
~/.config/claude/projects; CLAUDE_CONFIG_DIR overrides), subagents in
<sessionId>/subagents/agent-<id>.jsonl or, in newer versions, as agent_progress lines.

One API call per unique (message.id, requestId), as ccusage counts them: streaming writes one
line per content block with the same ids and a copy of usage, so the line with the largest
token total is kept. input_tokens = input + cache_creation + cache_read; reported cache reads
and writes come from usage, and the TTL the agent chose from usage.cache_creation
(ephemeral_1h_input_tokens: 3600 s, ephemeral_5m_input_tokens: 300 s). API-error lines
(isApiErrorMessage, model <synthetic>) are skipped and counted. A call's arrival is its first
line's timestamp; think_s is the gap since the previous call's last line. Prompts are rebuilt
by ``traces.importers.rebuild`` (compact_boundary system lines break the prefix).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from traces.importers.common import (
    Call,
    Problems,
    Skip,
    expand_paths,
    need,
    optional,
    optional_text,
    read_jsonl,
)
from traces.importers.rebuild import rebuild_chain
from traces.schema import TraceError

DEFAULT_BLOCK_SIZE = 64
WORKLOAD = "claude_code"


def default_paths() -> list[Path]:
    if os.environ.get("CLAUDE_CONFIG_DIR"):
        roots = [Path(p) / "projects" for p in os.environ["CLAUDE_CONFIG_DIR"].split(",")]
    else:
        home = Path.home()
        roots = [home / ".claude" / "projects", home / ".config" / "claude" / "projects"]
    found = [r for r in roots if r.is_dir()]
    if not found:
        raise TraceError(f"no Claude Code transcripts found in {', '.join(map(str, roots))}; "
                         "pass a file or folder")
    return found


def _seconds(stamp: Any) -> float:
    if not isinstance(stamp, str):
        raise Skip("field 'timestamp' missing or not a string")
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        raise Skip(f"timestamp {stamp!r:.40} is not ISO 8601") from None


def _usage_call(message: dict[str, Any], request_id: Any, problems: Problems) -> dict[str, Any]:
    usage = need(message, "usage", dict)
    counts = {k: problems.tokens(usage, k, 0) for k in ("input_tokens", "output_tokens")}
    for k in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        counts[k] = problems.tokens(usage, k, 0) if k in usage else 0
    problems.check_tokens("the prompt (input + cache creation + cache read tokens)",
                          counts["input_tokens"] + counts["cache_creation_input_tokens"]
                          + counts["cache_read_input_tokens"])
    breakdown = usage.get("cache_creation") or {}
    if not isinstance(breakdown, dict):
        raise Skip("field 'cache_creation' is not an object")
    ttl = None
    if (optional(breakdown, "ephemeral_1h_input_tokens", int, 0) or 0) > 0:
        ttl = 3600.0
    elif (optional(breakdown, "ephemeral_5m_input_tokens", int, 0) or 0) > 0:
        ttl = 300.0
    return {"id": (str(need(message, "id", str)), str(request_id)), "counts": counts, "ttl": ttl,
            "model": optional_text(message, "model")}


def parse(paths: list[str], block_size: int, problems: Problems) -> list[Call]:
    files = expand_paths(paths or default_paths())
    calls: dict[tuple[str, str], dict[str, Any]] = {}
    compactions: dict[str, list[float]] = {}
    for path in files:
        file_agent = path.stem if "subagents" in path.parts else None
        for number, line in read_jsonl(path, problems):
            try:
                _line(line, file_agent, calls, compactions, problems)
            except Skip as exc:
                problems.add(str(path), number, str(exc))
    progress = sum(1 for c in calls.values() if c["progress"])
    problems.tell("calls from agent_progress lines (subagents logged inside the main transcript; "
                  "ccusage does not count them)", progress)
    chains: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for call in calls.values():
        chains.setdefault((call["session"], call["agent"]), []).append(call)
    out: list[Call] = []
    for (session, agent), chain in chains.items():
        chain.sort(key=lambda c: c["first"])
        built = []
        breaks = set()
        for i, c in enumerate(chain):
            n = c["counts"]
            total_in = n["input_tokens"] + n["cache_creation_input_tokens"] + n["cache_read_input_tokens"]
            prev_end = chain[i - 1]["last"] if i else None
            if i and any(prev_end <= t <= c["first"] for t in compactions.get(session, [])) \
                    and agent == "main":
                breaks.add(i)
            built.append(Call(
                session, f"{c['id'][0]}:{c['id'][1]}", c["first"], max(total_in, 1), n["output_tokens"],
                blocks=None, agent="main" if agent == "main" else "subagent",
                think_s=max(c["first"] - prev_end, 0.0) if prev_end is not None else None,
                model=c["model"], reported_cached_tokens=n["cache_read_input_tokens"],
                reported_cache_write_tokens=n["cache_creation_input_tokens"], cache_ttl_s=c["ttl"]))
        rebuild_chain(built, block_size, f"{session}/{agent}", breaks)
        out.extend(built)
    _hang_subagents(out)
    return out


def _line(line: dict[str, Any], file_agent: str | None, calls: dict, compactions: dict,
          problems: Problems) -> None:
    kind = line.get("type")
    if kind == "system" and line.get("subtype") == "compact_boundary":
        compactions.setdefault(str(line.get("sessionId")), []).append(_seconds(line.get("timestamp")))
        return
    if kind == "progress" and isinstance(line.get("data"), dict) \
            and line["data"].get("type") == "agent_progress":
        inner = line["data"].get("message") or {}
        if not isinstance(inner, dict) or inner.get("type") != "assistant":
            return
        agent = f"agent-{line['data'].get('agentId', 'unknown')}"
        stamp = inner.get("timestamp", line.get("timestamp"))
        message, request_id = inner.get("message") or {}, inner.get("requestId")
    elif kind == "assistant":
        message, request_id, stamp = line.get("message"), line.get("requestId"), line.get("timestamp")
        agent = file_agent or ("sidechain" if line.get("isSidechain") else "main")
        synthetic = isinstance(message, dict) and message.get("model") == "<synthetic>"
        if line.get("isApiErrorMessage") or synthetic:
            problems.note("API-error lines")
            return
    else:
        return
    if not isinstance(message, dict):
        raise Skip("field 'message' missing or not an object")
    if request_id is None:
        raise Skip("field 'requestId' missing")
    session = line.get("sessionId")
    if not isinstance(session, str):
        raise Skip("field 'sessionId' missing")
    call = _usage_call(message, request_id, problems)
    t = _seconds(stamp)
    key = call["id"]
    total = sum(call["counts"].values())
    have = calls.get(key)
    if have is None:
        calls[key] = {**call, "session": session, "agent": agent, "first": t, "last": t, "total": total,
                      "progress": kind == "progress"}
        return
    have["first"], have["last"] = min(have["first"], t), max(have["last"], t)
    if total > have["total"]:
        have.update(counts=call["counts"], ttl=call["ttl"] or have["ttl"], total=total)


def _hang_subagents(calls: list[Call]) -> None:
    """A subagent chain's first call continues nothing, but it was started by the main call
    sent just before it: make that its parent (kept_blocks stays 0)."""
    main = sorted((c for c in calls if c.agent == "main"), key=lambda c: c.arrival_s)
    for c in calls:
        if c.agent != "main" and c.parent_id is None:
            before = [m for m in main if m.session_id == c.session_id and m.arrival_s <= c.arrival_s]
            c.parent_id = before[-1].request_id if before else None
