"""Token-id prompts from block hashes: no tokenizer, no text round trip.

Every block hash maps to a fixed run of ``block_size`` token ids drawn by a numpy generator
seeded with the hash, from ``[low, vocab)`` (the ids below ``low`` are the model's special
tokens), so equal hashes give equal prefixes on any server. The blocks a call's *output*
completed are the exception: a child that keeps them must send the tokens the server really
produced (the parent's prompt tail and its returned output ids), or the server's cache would
never match them. ``PromptBuilder.learn`` records those runs when a parent finishes.
"""

from __future__ import annotations

import numpy as np

from traces.hashing import string_key


class PromptBuilder:
    """Builds prompts as int32 token-id arrays and remembers the real output-completed blocks."""

    def __init__(self, block_size: int, vocab_size: int, low: int) -> None:
        if not 0 <= low < vocab_size:
            raise ValueError(f"token ids [{low}, {vocab_size}) is empty")
        self.bs, self.vocab, self.low = block_size, vocab_size, low
        # output-block hash -> the tokens the server produced (None: its call has not returned them)
        self._real: dict[int, np.ndarray | None] = {}
        self.synthetic_blocks = 0  # kept output blocks sent with drawn ids: the server cannot match them

    def draw(self, seed: int, n: int) -> np.ndarray:
        """``n`` ids from a generator seeded with ``seed`` (a block hash or a string key)."""
        return np.random.default_rng(seed).integers(self.low, self.vocab, n, dtype=np.int64).astype(np.int32)

    def block(self, h: int) -> np.ndarray:
        if h in self._real:
            real = self._real[h]
            if real is not None:
                return real
            self.synthetic_blocks += 1
        return self.draw(h, self.bs)

    def expect(self, output_blocks: np.ndarray) -> None:
        """Note a sent call's output blocks: a child that keeps one before the call returned its
        ids (open mode, or a server that returns none) is counted in ``synthetic_blocks``."""
        for h in output_blocks:
            self._real.setdefault(int(h), None)

    def prompt(self, request_id: str, blocks: np.ndarray, input_tokens: int) -> np.ndarray:
        """The prompt's ids: one run per full block, then a tail seeded by the request id."""
        parts = [self.block(int(h)) for h in blocks]
        tail = input_tokens - len(blocks) * self.bs
        if tail > 0:
            parts.append(self.draw(string_key(request_id + "/tail"), tail))
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)

    def learn(self, prompt: np.ndarray, output_ids: list[int] | np.ndarray, output_blocks: np.ndarray) -> int:
        """Record the real tokens of the blocks a finished call's output completed: the sequence
        ``prompt + output_ids`` cut into blocks after the prompt's full ones. Returns how many of
        ``output_blocks`` it could fill (fewer when the server returned fewer ids)."""
        seq = np.concatenate([prompt, np.asarray(output_ids, dtype=np.int32)])
        first = len(prompt) // self.bs
        filled = 0
        for j, h in enumerate(output_blocks):
            lo = (first + j) * self.bs
            if lo + self.bs > len(seq):
                break
            self._real[int(h)] = seq[lo:lo + self.bs]
            filled += 1
        return filled
