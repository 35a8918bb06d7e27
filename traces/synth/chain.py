"""One agent's growing token stream, hashed into blocks once as it grows.

A stream is a list of segments (a 64-bit content key and a token count). A block's content key
is a function of the block's tokens (see ``_piece_keys``), so equal tokens give equal hashes.
Blocks completed by a call's output use the request-id rule of
:func:`traces.hashing.output_block_hashes`, exactly as ``traces.expand`` rebuilds them.
"""

from __future__ import annotations

import numpy as np

from traces.hashing import MASK64, advance, mix64, mix_int, output_block_keys, state_of, string_key

_C_OFFSET = np.uint64(0x632BE59BD9B4E019)
_POS = 0xD6E8FEB86659FD93


class Chain:
    """Segments appended at the tail; ``prompt()`` hashes the full blocks not hashed yet."""

    def __init__(self, block_size: int) -> None:
        self.bs = block_size
        self.keys: list[int] = []
        self.starts: list[int] = []
        self.lengths: list[int] = []
        self.length = 0
        self.hashes = np.empty(256, dtype=np.uint64)
        self.n_blocks = 0
        self.state = 0  # inner chain state after the last hashed block
        self._first_open = 0  # first segment that reaches past n_blocks * bs
        self.header: list[tuple[str, int]] = []  # fixed prompt head, e.g. system and tools
        self.history = 0
        self.fresh: list[tuple[str, int]] = []

    # -- building the stream --------------------------------------------------------------
    def add(self, key: int, kind: str, tokens: int, header: bool = False) -> None:
        """Append a prompt segment; header segments are listed by kind in every call's segments."""
        if tokens <= 0:
            return
        self._append(key, tokens)
        if header:
            self.header.append((kind, tokens))
        else:
            self.fresh.append((kind, tokens))

    def _append(self, key: int, tokens: int) -> None:
        self.keys.append(key)
        self.starts.append(self.length)
        self.lengths.append(tokens)
        self.length += tokens

    def _store(self, new: np.ndarray, state: int) -> None:
        self.state = state
        end = self.n_blocks + len(new)
        if end > len(self.hashes):
            grown = np.empty(max(end, 2 * len(self.hashes)), dtype=np.uint64)
            grown[: self.n_blocks] = self.hashes[: self.n_blocks]
            self.hashes = grown
        self.hashes[self.n_blocks : end] = new
        self.n_blocks = end

    # -- a call ---------------------------------------------------------------------------
    def prompt(self) -> tuple[int, np.ndarray, list[tuple[str, int]]]:
        """(kept_blocks, new_block_hashes, segments) of a call whose prompt is the whole stream."""
        kept = self.n_blocks
        target = self.length // self.bs
        if target > kept:
            self._store(*advance(self.state, self._piece_keys(target)))
        new = self.hashes[kept : self.n_blocks].copy()
        segments = list(self.header)
        if self.history:
            segments.append(("history", self.history))
        segments.extend(self.fresh)
        self.history += sum(t for _, t in self.fresh)
        self.fresh = []
        return kept, new, segments

    def output(self, request_id: str, input_tokens: int, output_tokens: int) -> None:
        """Append a call's output; the blocks it completes get request-id hashes."""
        assert input_tokens == self.length and self.n_blocks == input_tokens // self.bs
        keys = output_block_keys(request_id, input_tokens, output_tokens, self.bs)
        self._store(*advance(self.state, keys))
        if output_tokens > 0:
            self._append(string_key(request_id), output_tokens)
            self.history += output_tokens

    def truncate(self, tokens: int) -> None:
        """Cut the stream back to its first ``tokens`` tokens (compaction keeps the head)."""
        keep = 0
        while keep < len(self.starts) and self.starts[keep] < tokens:
            keep += 1
        del self.keys[keep:], self.starts[keep:], self.lengths[keep:]
        if keep:
            self.lengths[-1] = min(self.lengths[-1], tokens - self.starts[-1])
        self.length = tokens
        self.n_blocks = tokens // self.bs
        self.state = state_of(int(self.hashes[self.n_blocks - 1]) if self.n_blocks else None)
        self._first_open = 0
        self.history = 0
        self.fresh = []

    def _piece_keys(self, target_blocks: int) -> np.ndarray:
        """Content keys of blocks n_blocks..target_blocks-1.

        A block's tokens are fixed by the segment covering its first token (and that token's
        offset in it) and by every segment starting inside the block (and where), since segments
        are contiguous; the key sums one mixed term for each.
        """
        bs = self.bs
        lo, hi = self.n_blocks * bs, target_blocks * bs
        first = self._first_open
        while self.starts[first] + self.lengths[first] <= lo:
            first += 1
        self._first_open = first
        starts = np.array(self.starts[first:], dtype=np.int64)
        keys = np.array(self.keys[first:], dtype=np.uint64)
        block_lo = np.arange(lo, hi, bs, dtype=np.int64)
        seg = np.searchsorted(starts, block_lo, side="right") - 1
        content = mix64(keys[seg] + (block_lo - starts[seg]).astype(np.uint64) * _C_OFFSET)
        for start, key in zip(self.starts[first + 1 :], self.keys[first + 1 :], strict=True):
            if start >= hi:
                break
            if start % bs:
                block = (start - lo) // bs
                term = mix_int((key + (start % bs) * _POS) & MASK64)
                content[block] = (int(content[block]) + term) & MASK64
        return content
