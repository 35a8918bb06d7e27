"""Prompt structure rebuilt from usage numbers, for logs that record token counts, not tokens.

Within one agent's chain (calls in time order), call k's prompt starts with what it shares with
call k-1, then new blocks unique to call k:
- no compaction between them and the prompt grew past k-1's prompt plus output: it keeps k-1's
  whole sequence (prompt and output blocks);
- else, no compaction and it grew past k-1's prompt: it keeps k-1's prompt;
- else (compaction intervened, or the prompt shrank): it keeps as much of k-1's prompt as the
  provider reported reading from cache (typically the system prompt and tools).
One more piece of evidence overrides the first two cases: if the provider reported reading less
than k-1's prompt (by more than a block) although k-1's cache entry was still alive (the gap is
within its TTL), the prompt changed inside that prefix (the agent edited or dropped earlier
content), so call k keeps only what was read.
A chain's first call is all new blocks.
"""

from __future__ import annotations

import numpy as np

from traces.hashing import chain_hashes, output_blocks_after, string_key
from traces.importers.common import Call


def rebuild_chain(calls: list[Call], block_size: int, chain_key: str, breaks: set[int] = frozenset()) -> None:
    """Fill ``blocks`` and ``parent_id`` of a chain's calls (sorted by arrival) in place."""
    bs = block_size
    prev: Call | None = None
    for i, c in enumerate(calls):
        n_blocks = c.input_tokens // bs
        base = np.empty(0, dtype=np.uint64)
        if prev is not None:
            seq = np.concatenate([prev.blocks, output_blocks_after(
                prev.blocks, prev.request_id, prev.input_tokens, prev.output_tokens, bs)])
            read = c.reported_cached_tokens
            alive = prev.cache_ttl_s is not None and c.arrival_s - prev.arrival_s <= prev.cache_ttl_s
            edited = read is not None and alive and read < prev.input_tokens - bs
            if i not in breaks and not edited and c.input_tokens >= prev.input_tokens + prev.output_tokens:
                keep = len(seq)
            elif i not in breaks and not edited and c.input_tokens >= prev.input_tokens:
                keep = len(prev.blocks)
            else:
                keep = min((read or 0) // bs, len(prev.blocks))
            base = seq[: min(keep, n_blocks)]
            c.parent_id = prev.request_id
        keys = np.arange(n_blocks - len(base), dtype=np.uint64) + np.uint64(string_key(f"{chain_key}/{i}"))
        last = int(base[-1]) if len(base) else None
        c.blocks = np.concatenate([base, chain_hashes(last, keys)])
        prev = c
