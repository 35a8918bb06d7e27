"""Chained block hashes, output-completed blocks and re-blocking, against hand computation."""

import numpy as np

from traces.hashing import (
    MASK64,
    P,
    chain_hashes,
    mix64,
    output_block_count,
    output_block_hashes,
    output_block_hashes_many,
    reblock,
    reusable_blocks,
    state_of,
    string_key,
    unmix64,
)


def splitmix_finaliser(x: int) -> int:
    """SplitMix64's finaliser written out from its published definition."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 % 2**64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB % 2**64
    return x ^ (x >> 31)


def by_hand(prev_state: int, keys: list[int]) -> list[int]:
    out, state = [], prev_state
    for k in keys:
        state = (state * P + splitmix_finaliser(k)) % 2**64
        out.append(splitmix_finaliser(state))
    return out


def test_mix_is_splitmix_and_invertible():
    xs = [0, 1, 2, 12345, MASK64, 0x0123456789ABCDEF]
    assert [int(v) for v in mix64(np.array(xs, np.uint64))] == [splitmix_finaliser(x) for x in xs]
    assert [int(v) for v in unmix64(mix64(np.array(xs, np.uint64)))] == xs


def test_chain_matches_hand_computation_short_and_long_runs():
    keys = [7 * i + 3 for i in range(40)]
    for n in (1, 3, 8, 40):  # below and above the scalar/vector switch
        assert [int(h) for h in chain_hashes(None, np.array(keys[:n], np.uint64))] == by_hand(0, keys[:n])


def test_chain_continues_from_a_stored_hash_and_encodes_the_prefix():
    keys = np.array([11, 22, 33, 44, 55], np.uint64)
    full = chain_hashes(None, keys)
    assert (chain_hashes(int(full[1]), keys[2:]) == full[2:]).all()
    # same block content after a different prefix hashes differently
    other = chain_hashes(None, np.array([99, 22, 33], np.uint64))
    assert not set(other[1:].tolist()) & set(full.tolist())


def test_output_completed_blocks_by_hand():
    # prompt 100 tokens, output 50, blocks of 64: the prompt has 1 full block, the sequence 2
    assert output_block_count(100, 50, 64) == 1
    assert output_block_count(128, 0, 64) == 0
    assert output_block_count(127, 1, 64) == 1
    assert output_block_count(10, 200, 64) == 3
    prev = 0xDEADBEEF
    got = output_block_hashes(prev, "s-7", 100, 50, 64)
    key = string_key("s-7")
    state = int(unmix64(np.array([prev], np.uint64))[0])
    assert [int(h) for h in got] == by_hand(state, [key])
    got3 = output_block_hashes(None, "r", 10, 200, 64)
    assert [int(h) for h in got3] == by_hand(0, [string_key("r") + j for j in range(3)])


def test_many_calls_output_blocks_in_one_pass_equal_one_at_a_time():
    # 3 blocks (prompt 10 + 200 tokens), none, 1, and 40 (past the scalar cut-over)
    calls = [(None, "r", 10, 200), (7, "a", 128, 0), (0xDEADBEEF, "s-7", 100, 50), (42, "x", 64, 2560)]
    flat, offsets = output_block_hashes_many(
        np.array([state_of(h) for h, *_ in calls], dtype=np.uint64), [c[1] for c in calls],
        np.array([c[2] for c in calls]), np.array([c[3] for c in calls]), 64)
    assert offsets.tolist() == [0, 3, 3, 4, 44]
    for i, (prev, rid, inp, out) in enumerate(calls):
        one = output_block_hashes(prev, rid, inp, out, 64)
        assert flat[offsets[i]:offsets[i + 1]].tolist() == one.tolist()


def test_reblock_takes_every_kth_hash():
    hashes = np.arange(1, 9, dtype=np.uint64)  # h1..h8
    assert reblock(hashes, 1).tolist() == list(range(1, 9))
    assert reblock(hashes, 4).tolist() == [4, 8]
    assert reblock(hashes, 3).tolist() == [3, 6]  # the partial third big block is dropped


def test_reusable_blocks_keeps_the_last_token_computed():
    assert reusable_blocks(10, 4) == 2
    assert reusable_blocks(12, 4) == 2  # block-aligned: the last block is recomputed
    assert reusable_blocks(13, 4) == 3
    assert reusable_blocks(1, 4) == 0


def test_output_blocks_at_a_bigger_engine_block_equal_the_reblocked_sequence_tail():
    from engines.base import Request
    from engines.deployment import Deployment, engine_block_size

    rng = np.random.default_rng(0)
    for factor in (2, 3, 4):
        _, f = engine_block_size(16 * factor, 16)
        for prompt_blocks in range(0, 9):
            for output_blocks in range(0, 9):
                prompt = rng.integers(0, 2**63, prompt_blocks, dtype=np.uint64)
                output = rng.integers(0, 2**63, output_blocks, dtype=np.uint64)
                request = Request("r", "s", 0, "w", 0.0, 16 * prompt_blocks, 16 * output_blocks,
                                  prompt, 16, output)
                deployment = type("D", (), {"factor": f})()  # output_blocks reads only the factor
                got = Deployment.output_blocks(deployment, request)
                whole = reblock(np.concatenate([prompt, output]), f)
                assert got.tolist() == whole[prompt_blocks // f:].tolist()
