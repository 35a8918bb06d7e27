"""OpenAI Codex CLI rollouts: ~/.codex/sessions/YYYY/MM/DD/rollout-*.jsonl, lines {timestamp,
type, payload}. Each event_msg with payload.type token_count is a call: its info's
last_token_usage (or, without one, the change in total_token_usage) gives input tokens (cached
included), cached_input_tokens (the reported cache read) and output tokens. Events whose info
is null, or that repeat the previous total, are skipped. One file is one session; prompts are
rebuilt by ``traces.importers.rebuild``.
"""

from __future__ import annotations

from typing import Any

from traces.importers.claude_code import _seconds
from traces.importers.common import Call, Problems, Skip, expand_paths, optional_text, read_jsonl
from traces.importers.rebuild import rebuild_chain

DEFAULT_BLOCK_SIZE = 64
WORKLOAD = "codex"
FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens")


def _usage(obj: Any, what: str, problems: Problems) -> dict[str, int]:
    if not isinstance(obj, dict):
        raise Skip(f"field '{what}' missing or not an object")
    return {k: problems.tokens(obj, k, 0) if k in obj or k != "cached_input_tokens" else 0 for k in FIELDS}


def parse(paths: list[str], block_size: int, problems: Problems) -> list[Call]:
    calls: list[Call] = []
    for path in expand_paths(paths):
        session = path.stem
        model = None
        chain: list[Call] = []
        previous_total: dict[str, int] | None = None
        for number, line in read_jsonl(path, problems):
            try:
                payload = line.get("payload")
                if line.get("type") == "session_meta" and isinstance(payload, dict) and payload.get("id"):
                    session = str(payload["id"])
                if line.get("type") == "turn_context" and isinstance(payload, dict):
                    model = optional_text(payload, "model") or model
                if line.get("type") != "event_msg" or not isinstance(payload, dict) \
                        or payload.get("type") != "token_count":
                    continue
                info = payload.get("info")
                if info is None:
                    problems.note("token_count events without info")
                    continue
                if not isinstance(info, dict):
                    raise Skip("field 'info' is not an object")
                total = _usage(info.get("total_token_usage"), "total_token_usage", problems)
                if total == previous_total:
                    problems.note("repeated token_count events")
                    continue
                if info.get("last_token_usage") is not None:
                    last = _usage(info["last_token_usage"], "last_token_usage", problems)
                elif previous_total is not None:
                    last = {k: total[k] - previous_total[k] for k in FIELDS}
                else:
                    last = total
                previous_total = total
                if last["input_tokens"] < 1:
                    raise Skip("a call with no input tokens")
                if last["output_tokens"] < 0:
                    raise Skip("a call with negative output tokens (the running total went down)")
                chain.append(Call(session, f"{session}:{number}", _seconds(line.get("timestamp")),
                                  last["input_tokens"], last["output_tokens"], blocks=None,
                                  model=optional_text(info, "model") or model,
                                  reported_cached_tokens=last["cached_input_tokens"]))
            except Skip as exc:
                problems.add(str(path), number, str(exc))
        for c in chain:
            c.session_id = session
        rebuild_chain(chain, block_size, session)
        calls.extend(chain)
    return calls
