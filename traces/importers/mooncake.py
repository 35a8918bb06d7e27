"""Mooncake FAST'25 traces and AIPerf's mooncake_trace: JSONL {timestamp (ms), input_length,
output_length, hash_ids} plus AIPerf's optional session_id and delay (ms).

hash_ids are already prefix-chained (equal id = equal prefix); they are kept, mapped to uint64
by the SplitMix64 finaliser. An id list may end with the partial last block: only the first
input_length // block_size ids name full blocks. Calls with a session_id form a chain in file
order (each continues the previous one; delay is its think time); without one, every call is
its own session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from traces.hashing import mix64
from traces.importers.common import (
    Call,
    Problems,
    Skip,
    expand_paths,
    need,
    need_ids,
    optional,
    read_jsonl,
)

DEFAULT_BLOCK_SIZE = 512
WORKLOAD = "mooncake"


def ids_to_blocks(ids: list[int], n_blocks: int, salt: int = 0) -> np.ndarray:
    if len(ids) < n_blocks:
        raise Skip(f"hash_ids has {len(ids)} ids, input_length needs {n_blocks} full blocks")
    return mix64(np.array(ids[:n_blocks], dtype=np.uint64) ^ np.uint64(salt))


def parse(paths: list[str], block_size: int, problems: Problems) -> list[Call]:
    calls: list[Call] = []
    last_in_session: dict[str, str] = {}
    for path in expand_paths(paths):
        for number, obj in read_jsonl(path, problems):
            try:
                calls.append(_call(obj, path, number, block_size, last_in_session, problems))
            except Skip as exc:
                problems.add(str(path), number, str(exc))
    return calls


def _call(obj: dict, path: Path, number: int, bs: int, last_in_session: dict[str, str],
          problems: Problems) -> Call:
    ts = need(obj, "timestamp", (int, float), 0)
    n_in = problems.tokens(obj, "input_length", 1)
    n_out = problems.tokens(obj, "output_length", 0)
    blocks = ids_to_blocks(need_ids(obj, "hash_ids"), n_in // bs)
    request_id = f"{path.stem}:{number}"
    session = obj.get("session_id")
    delay = optional(obj, "delay", (int, float), 0)  # ms
    if session is None:
        return Call(request_id, request_id, ts / 1000.0, n_in, n_out, blocks)
    session = str(session)
    parent = last_in_session.get(session)
    last_in_session[session] = request_id
    return Call(session, request_id, ts / 1000.0, n_in, n_out, blocks, parent_id=parent,
                think_s=(delay / 1000.0) if delay is not None else None)
