"""Alibaba "KVCache cache in the wild" traces (qwen-bailian-usagetraces-anon): JSONL with
chat_id, parent_chat_id (-1 for a root), timestamp (s), input_length, output_length, type, turn,
hash_ids (salted SipHash of 16-token blocks, remapped to integers).

The ids hash single blocks, not prefixes, so they are chained here (equal prefix of ids = equal
hash). Sessions are rebuilt from the parent chains: a call belongs to its root's session. A
chat_id seen before (a duplicated line) is skipped and reported; the first line is kept.
"""

from __future__ import annotations

import numpy as np

from traces.hashing import chain_hashes
from traces.importers.common import Call, Problems, Skip, expand_paths, need, need_ids, read_jsonl

DEFAULT_BLOCK_SIZE = 16
WORKLOAD = "bailian"


def parse(paths: list[str], block_size: int, problems: Problems) -> list[Call]:
    rows = []
    first_line: dict[str, str] = {}
    for path in expand_paths(paths):
        for number, obj in read_jsonl(path, problems):
            try:
                chat = need(obj, "chat_id", (int, str))
                if str(chat) in first_line:
                    raise Skip(f"chat_id {chat} repeats {first_line[str(chat)]}; the first is kept")
                parent = need(obj, "parent_chat_id", (int, str))
                ts = need(obj, "timestamp", (int, float), 0)
                n_in = problems.tokens(obj, "input_length", 1)
                n_out = problems.tokens(obj, "output_length", 0)
                ids = need_ids(obj, "hash_ids")
                if len(ids) < n_in // block_size:
                    raise Skip(f"hash_ids has {len(ids)} ids, input_length needs {n_in // block_size}")
                first_line[str(chat)] = f"{path.name}:{number}"
                rows.append((str(chat), None if str(parent) == "-1" else str(parent), ts, n_in, n_out,
                             ids[: n_in // block_size], str(obj.get("type", "text"))))
            except Skip as exc:
                problems.add(str(path), number, str(exc))
    root: dict[str, str] = {}
    parents = {r[0]: r[1] for r in rows}

    def root_of(chat: str) -> str:
        seen = []
        while chat not in root and parents.get(chat) is not None and parents[chat] in parents:
            seen.append(chat)
            chat = parents[chat]
            if len(seen) > len(parents):
                break  # a cycle: treat where we stopped as the root
        top = root.get(chat, chat)
        for c in seen:
            root[c] = top
        return top

    calls = []
    for chat, parent, ts, n_in, n_out, ids, kind in rows:
        blocks = chain_hashes(None, np.array(ids, dtype=np.uint64))
        calls.append(Call(f"chat-{root_of(chat)}", chat, float(ts), n_in, n_out, blocks,
                          parent_id=parent if parent in parents else None, agent=kind))
    return calls
