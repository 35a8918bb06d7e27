"""SemiAnalysis Claude Code session traces (cc-traces-weka-*): one JSON session per line,
{id, models, block_size, hash_id_scope, requests: [{t, model, in, out, hash_ids, api_time, ttft,
think_time, type}, ...]}, with subagent groups {type: "subagent", agent_id, subagent_type,
requests: [...]} nested one level.

hash_id_scope "local" means ids compare only within a session, so they are salted by the
session id before mapping to uint64. Each group is a chain in time order; a subagent's first
call hangs off the main call sent just before it. A session id seen before (a duplicated line)
is skipped and reported; the first is kept.
"""

from __future__ import annotations

from typing import Any

from traces.hashing import string_key
from traces.importers.common import (
    Call,
    Problems,
    Skip,
    expand_paths,
    need,
    need_ids,
    optional,
    optional_text,
    read_jsonl,
)
from traces.importers.mooncake import ids_to_blocks

DEFAULT_BLOCK_SIZE = 64
WORKLOAD = "claude_code"


def parse(paths: list[str], block_size: int, problems: Problems) -> list[Call]:
    calls: list[Call] = []
    first_line: dict[str, str] = {}
    for path in expand_paths(paths):
        for number, obj in read_jsonl(path, problems):
            try:
                session = str(need(obj, "id", (str, int)))
                if session in first_line:
                    raise Skip(f"session {session} repeats {first_line[session]}; the first is kept")
                calls.extend(_session(obj, block_size, problems))
                first_line[session] = f"{path.name}:{number}"
            except Skip as exc:
                problems.add(str(path), number, str(exc))
    return calls


def _session(obj: dict[str, Any], bs: int, problems: Problems) -> list[Call]:
    session = str(need(obj, "id", (str, int)))
    file_bs = need(obj, "block_size", int, 1)
    if file_bs != bs:
        raise Skip(f"block_size {file_bs} differs from the import's {bs} (pass --block-size {file_bs})")
    salt = string_key(session) if obj.get("hash_id_scope", "local") == "local" else 0
    main: list[Call] = []
    groups: list[tuple[str, list[Call]]] = []
    for i, req in enumerate(need(obj, "requests", list)):
        if not isinstance(req, dict):
            raise Skip(f"requests[{i}] is not an object")
        if req.get("type") == "subagent":
            agent = str(req.get("agent_id", i))
            sub = [_request(r, session, f"{session}/{agent}/{j}", bs, salt, "subagent", problems)
                   for j, r in enumerate(need(req, "requests", list))]
            groups.append((agent, sub))
        else:
            main.append(_request(req, session, f"{session}/{i}", bs, salt, "main", problems))
    _chain(main)
    for _, sub in groups:
        _chain(sub)
        if sub:
            before = [c for c in main if c.arrival_s <= sub[0].arrival_s]
            sub[0].parent_id = before[-1].request_id if before else None
    return main + [c for _, sub in groups for c in sub]


def _request(r: dict[str, Any], session: str, rid: str, bs: int, salt: int, agent: str,
             problems: Problems) -> Call:
    if not isinstance(r, dict):
        raise Skip(f"request {rid} is not an object")
    n_in = problems.tokens(r, "in", 1)
    think = optional(r, "think_time", (int, float), 0)
    return Call(session, rid, float(need(r, "t", (int, float), 0)), n_in, problems.tokens(r, "out", 0),
                ids_to_blocks(need_ids(r, "hash_ids"), n_in // bs, salt), agent=agent,
                think_s=float(think) if think is not None else None, model=optional_text(r, "model"))


def _chain(calls: list[Call]) -> None:
    calls.sort(key=lambda c: c.arrival_s)
    for prev, c in zip(calls, calls[1:], strict=False):
        c.parent_id = prev.request_id
