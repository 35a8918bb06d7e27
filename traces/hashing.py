"""Chained 64-bit block hashes, vectorised with numpy.

The hash of block i is ``H_i = mix(P * unmix(H_{i-1}) + c_i)  (mod 2**64)`` where ``c_i`` is a
64-bit key of block i's tokens, ``mix`` is the SplitMix64 finaliser (a bijection on 64 bits),
``unmix`` its inverse and ``P`` an odd constant. The root state is 0. Because ``mix`` is
invertible, ``H_i`` depends only on ``H_{i-1}`` and ``c_i`` (equal hash means equal prefix), and
the inner state is a linear recurrence, so a run of n blocks is hashed with prefix sums instead
of a Python loop: ``h_i = P**(i+1) * (h_{-1} + sum_{j<=i} c_j * P**-(j+1))``.

Blocks that a call's *output* completes get keys derived from its request_id
(:func:`output_block_hashes`), so an engine that keeps decode KV finds them in the child.
"""

from __future__ import annotations

import hashlib

import numpy as np

MASK64 = (1 << 64) - 1
P = 0x9E3779B97F4A7C15  # odd, so invertible mod 2**64
P_INV = pow(P, -1, 1 << 64)
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_M1_INV = pow(_M1, -1, 1 << 64)
_M2_INV = pow(_M2, -1, 1 << 64)

_U = np.uint64


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    x = (x ^ (x >> _U(30))) * _U(_M1)
    x = (x ^ (x >> _U(27))) * _U(_M2)
    return x ^ (x >> _U(31))


def unmix64(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`mix64`."""
    x = np.asarray(x, dtype=np.uint64)
    x = x ^ (x >> _U(31)) ^ (x >> _U(62))
    x = x * _U(_M2_INV)
    x = x ^ (x >> _U(27)) ^ (x >> _U(54))
    x = x * _U(_M1_INV)
    return x ^ (x >> _U(30)) ^ (x >> _U(60))


class _Powers:
    """Grow-on-demand tables of P**k and P**-k mod 2**64."""

    def __init__(self) -> None:
        self.pos = np.ones(1, dtype=np.uint64)
        self.neg = np.ones(1, dtype=np.uint64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n >= len(self.pos):
            size = max(n + 1, 2 * len(self.pos), 1024)
            pos = [1] * size
            neg = [1] * size
            for k in range(1, size):
                pos[k] = pos[k - 1] * P & MASK64
                neg[k] = neg[k - 1] * P_INV & MASK64
            self.pos = np.array(pos, dtype=np.uint64)
            self.neg = np.array(neg, dtype=np.uint64)
        return self.pos, self.neg


_POWERS = _Powers()


def mix_int(x: int) -> int:
    """:func:`mix64` of one Python int (faster than numpy for a handful of values)."""
    x = ((x ^ (x >> 30)) * _M1) & MASK64
    x = ((x ^ (x >> 27)) * _M2) & MASK64
    return x ^ (x >> 31)


def unmix_int(x: int) -> int:
    """:func:`unmix64` of one Python int."""
    x ^= (x >> 31) ^ (x >> 62)
    x = (x * _M2_INV) & MASK64
    x ^= (x >> 27) ^ (x >> 54)
    x = (x * _M1_INV) & MASK64
    return x ^ (x >> 30) ^ (x >> 60)


_SCALAR_RUN = 8  # below this many blocks a Python loop beats numpy's per-call overhead


def advance(state: int, content_keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Hash a run of blocks from the chain's inner state; returns (hashes, new inner state).

    The inner state after a block is ``unmix(hash)``; keeping it saves an unmix per run.
    """
    n = len(content_keys)
    if n == 0:
        return np.empty(0, dtype=np.uint64), state
    if n < _SCALAR_RUN:
        out = np.empty(n, dtype=np.uint64)
        for i, key in enumerate(content_keys.tolist()):
            state = (state * P + mix_int(key)) & MASK64
            out[i] = mix_int(state)
        return out, state
    pos, neg = _POWERS.upto(n)  # one run of _inner_states, without the segment bookkeeping
    states = pos[1 : n + 1] * (np.cumsum(mix64(content_keys) * neg[1 : n + 1], dtype=np.uint64) + _U(state))
    return mix64(states), int(states[-1])


def _inner_states(states: np.ndarray, content_keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Inner chain states of several runs at once: run r starts from ``states[r]`` and hashes the
    next ``counts[r]`` keys of ``content_keys`` (runs back to back). A segmented prefix sum."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    local = np.arange(len(content_keys), dtype=np.int64) - np.repeat(starts, counts)  # j in its run
    pos, neg = _POWERS.upto(int(counts.max(initial=0)))
    sums = np.cumsum(mix64(content_keys) * neg[local + 1], dtype=np.uint64)
    before = np.concatenate([_EMPTY, [_U(0)], sums])[starts]  # the running sum where each run starts
    return pos[local + 1] * (sums - np.repeat(before - states, counts))


def state_of(prev_hash: int | None) -> int:
    """Inner chain state after a block with hash ``prev_hash`` (0 before the first block)."""
    return 0 if prev_hash is None else unmix_int(int(prev_hash))


def chain_hashes(prev_hash: int | None, content_keys: np.ndarray) -> np.ndarray:
    """Hashes of blocks with the given content keys, continuing the chain after ``prev_hash``.

    ``prev_hash`` is the hash of the block just before (None at the start of a sequence).
    """
    return advance(state_of(prev_hash), np.asarray(content_keys, dtype=np.uint64))[0]


def string_key(text: str) -> int:
    """A stable 64-bit key of a string (BLAKE2b, 8 bytes), independent of Python's hash seed."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def output_block_count(input_tokens: int, output_tokens: int, block_size: int) -> int:
    """How many full blocks a call's output completes after its prompt."""
    return (input_tokens + output_tokens) // block_size - input_tokens // block_size


def output_block_keys(request_id: str, input_tokens: int, output_tokens: int,
                      block_size: int) -> np.ndarray:
    """Content keys of the blocks a call's output completes: ``string_key(request_id) + j``."""
    n = output_block_count(input_tokens, output_tokens, block_size)
    return (np.arange(n, dtype=np.uint64) + np.uint64(string_key(request_id))) if n else _EMPTY


_EMPTY = np.empty(0, dtype=np.uint64)


def output_block_hashes(
    last_prompt_hash: int | None,
    request_id: str,
    input_tokens: int,
    output_tokens: int,
    block_size: int,
) -> np.ndarray:
    """Hashes of the blocks a call's output completes.

    Block j's key is ``string_key(request_id) + j``: the request id names the prompt (hence its
    partial last block) and the output, so the key is a function of the block's tokens.
    """
    return chain_hashes(last_prompt_hash, output_block_keys(request_id, input_tokens, output_tokens,
                                                            block_size))


def output_blocks_after(prompt: np.ndarray, request_id: str, input_tokens: int, output_tokens: int,
                        block_size: int) -> np.ndarray:
    """:func:`output_block_hashes` of a call whose full prompt block list is ``prompt``."""
    last = int(prompt[-1]) if len(prompt) else None
    return output_block_hashes(last, request_id, input_tokens, output_tokens, block_size)


_BATCH_ROWS = 1 << 16  # calls per numpy pass: bounds the temporaries on big traces


def output_block_hashes_many(prev_states: np.ndarray, request_ids: list[str],
                             input_tokens: np.ndarray, output_tokens: np.ndarray,
                             block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`output_block_hashes` of many calls in a few numpy passes: call i's blocks are
    ``flat[offsets[i]:offsets[i + 1]]``. ``prev_states`` holds each call's inner chain state
    after its last prompt block (``state_of`` of that block's hash)."""
    inp, out = np.asarray(input_tokens, dtype=np.int64), np.asarray(output_tokens, dtype=np.int64)
    counts = (inp + out) // block_size - inp // block_size
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = np.empty(int(offsets[-1]), dtype=np.uint64)
    for lo in range(0, len(counts), _BATCH_ROWS):
        hi = min(lo + _BATCH_ROWS, len(counts))
        c = counts[lo:hi]
        base = np.fromiter((string_key(r) for r in request_ids[lo:hi]), dtype=np.uint64, count=hi - lo)
        local = np.arange(offsets[hi] - offsets[lo], dtype=np.uint64) - np.repeat(
            (offsets[lo:hi] - offsets[lo]).astype(np.uint64), c)
        keys = np.repeat(base, c) + local
        states = _inner_states(np.asarray(prev_states[lo:hi], dtype=np.uint64), keys, c)
        flat[offsets[lo]:offsets[hi]] = mix64(states)
    return flat, offsets


def reblock(hashes: np.ndarray, factor: int) -> np.ndarray:
    """Hash list for blocks ``factor`` times larger: every factor-th hash.

    With chained hashes the hash of the last small block of a big block already covers the whole
    prefix, so it identifies the big block. A trailing partial big block is dropped.
    """
    if factor < 1:
        raise ValueError(f"reblock factor must be >= 1, got {factor}")
    return np.asarray(hashes, dtype=np.uint64)[factor - 1 :: factor]


def reusable_blocks(input_tokens: int, block_size: int) -> int:
    """Blocks of a prompt that may come from cache: every full block before the last token.

    At least one token must be computed to produce logits, so a block-aligned prompt recomputes
    its last block (as vLLM does) and a partial last block is never reused.
    """
    return max(input_tokens - 1, 0) // block_size
