"""The shared block cache: prefix hits per tier, LRU leaf-first eviction, pins, demotion."""

import numpy as np
import pytest

from engines.kv_cache import BlockCache


def H(*xs):
    return np.array(xs, dtype=np.uint64)


def serve(cache, hashes, t):
    """A whole call: acquire, compute the prompt (commit it), release."""
    got = cache.acquire(hashes, t)
    cache.commit(got, len(hashes), t)
    cache.release(got, t)
    return got


def test_lru_eviction_order_on_a_tiny_hbm_tier():
    cache = BlockCache([3], ["hbm"])
    for t, block in enumerate((10, 20, 30)):  # three one-block prompts at t = 0, 1, 2
        serve(cache, H(block), float(t))
    serve(cache, H(10), 3.0)  # touch 10: now 20 is least recently used
    serve(cache, H(40), 4.0)  # over capacity: evict 20
    assert [cache.lookup(H(b))[0] for b in (10, 20, 30, 40)] == [1, 0, 1, 1]
    serve(cache, H(50), 5.0)  # then 30
    assert [cache.lookup(H(b))[0] for b in (10, 20, 30, 40, 50)] == [1, 0, 0, 1, 1]
    assert cache.stats[0].evicted == 2


def test_eviction_takes_the_tail_so_prefixes_stay_cached():
    cache = BlockCache([3], ["hbm"])
    serve(cache, H(1, 2, 3), 0.0)
    serve(cache, H(9), 1.0)
    assert cache.lookup(H(1, 2, 3)) == [2]  # block 3 went, 1 and 2 stayed


def test_headroom_evicts_down_to_a_low_watermark():
    # 200 blocks with 1% headroom: once full, evict until 198 are used (two blocks free)
    for headroom, left_of_a in ((0.0, 99), (0.01, 97)):
        cache = BlockCache([200], ["hbm"], headroom=headroom)
        serve(cache, np.arange(1, 101, dtype=np.uint64), 0.0)  # A: 100 blocks
        serve(cache, np.arange(1001, 1101, dtype=np.uint64), 1.0)  # B: 100
        serve(cache, H(5000), 2.0)  # one block over: A (least recent) pays
        assert cache.lookup(np.arange(1, 101, dtype=np.uint64)) == [left_of_a]
        assert cache.used == [left_of_a + 101]
    serve(cache, H(6000), 3.0)  # fits in the headroom: nothing evicted
    assert cache.used == [199] and cache.stats[0].evicted == 3


def test_pinned_blocks_are_not_evicted():
    cache = BlockCache([2], ["hbm"])
    held = cache.acquire(H(1, 2), 0.0)
    cache.commit(held, 2, 0.0)
    serve(cache, H(7, 8), 1.0)
    assert cache.lookup(H(1, 2)) == [2] and cache.lookup(H(7, 8)) == [0]
    cache.release(held, 2.0)
    assert cache.used == [2]


def test_demotion_to_a_lower_tier_and_load_back():
    cache = BlockCache([2, 10], ["hbm", "dram"])
    serve(cache, H(1, 2), 0.0)
    serve(cache, H(5, 6), 1.0)  # 1, 2 move to DRAM
    assert cache.lookup(H(1, 2)) == [0, 2]
    got = cache.acquire(H(1, 2, 3), 2.0)
    assert got.hits == [0, 2] and cache.stats[1].loaded == 2
    # while pinned the request overflows HBM by its private block 3; 5, 6 went down to make room
    assert cache.lookup(H(5, 6)) == [0, 2] and cache.stats[0].overflow == 1
    cache.check([got])  # over capacity, but every HBM block is pinned: physically a lone call
    cache.commit(got, 3, 2.0)
    cache.release(got, 2.0)
    # released: its tail block 3 is the LRU leaf and moves down
    assert cache.lookup(H(1, 2, 3)) == [2, 1]
    assert cache.used == [2, 3]


def test_reusable_cap_counts_cached_last_block_as_recomputed():
    cache = BlockCache([10], ["hbm"])
    serve(cache, H(1, 2), 0.0)
    assert cache.acquire(H(1, 2), 1.0, reusable=1).hits == [1]


def test_last_tier_drops_lru():
    cache = BlockCache([1, 1], ["hbm", "dram"])
    for t, b in enumerate((1, 2, 3)):
        serve(cache, H(b), float(t))
    assert cache.lookup(H(3)) == [1, 0] and cache.lookup(H(2)) == [0, 1] and cache.lookup(H(1)) == [0, 0]
    assert cache.stats[1].evicted == 1


def test_only_the_last_tier_hands_dropped_runs_on():
    handed = []
    cache = BlockCache([1, 1], ["hbm", "dram"], admit_min_uses=2,
                       on_drop=lambda hashes, now: handed.append(hashes.tolist()))
    serve(cache, H(1), 0.0)  # used once: refused by DRAM's admission
    serve(cache, H(2), 1.0)
    assert handed == [] and cache.stats[0].dropped == 1
    for t in (2.0, 3.0):
        serve(cache, H(2), t)  # used three times: admitted to DRAM
    serve(cache, H(5), 4.0)
    serve(cache, H(5), 5.0)
    serve(cache, H(6), 6.0)
    serve(cache, H(6), 7.0)
    assert [2] in handed  # DRAM (the last tier) let block 2 go: it is handed on


def test_prompt_blocks_are_reusable_only_once_computed():
    cache = BlockCache([10], ["hbm"])
    a = cache.acquire(H(1, 2, 3, 4), 0.0)
    assert cache.lookup(H(1, 2, 3, 4)) == [0] and cache.uncommitted == 4
    cache.commit(a, 2, 1.0)  # the first chunk computed blocks 1 and 2
    assert cache.lookup(H(1, 2, 3, 4)) == [2] and cache.uncommitted == 2
    b = cache.acquire(H(1, 2, 3, 9), 1.5)
    assert b.hits == [2] and b.private == 2
    cache.check([a, b])
    cache.release(a, 2.0)  # preempted: keeps only what it computed
    cache.release(b, 2.0)
    assert cache.lookup(H(1, 2, 3, 4)) == [2] and cache.used == [2]
    cache.check(final=True)


def test_a_block_two_calls_computed_at_once_stays_private_to_the_second():
    cache = BlockCache([10], ["hbm"])
    a, b = cache.acquire(H(1, 2), 0.0), cache.acquire(H(1, 2), 0.0)  # both compute 1, 2
    cache.commit(a, 2, 1.0)
    cache.commit(b, 2, 1.0)
    assert cache.used == [2] and cache.uncommitted == 2  # b's copy is its own until it ends
    cache.check([a, b])
    cache.release(a, 2.0)
    cache.release(b, 2.0)
    assert cache.used == [2] and cache.uncommitted == 0
    cache.check(final=True)


def test_blocks_in_flight_are_waited_for_until_they_land():
    cache = BlockCache([4, 10], ["hbm", "dram"])
    serve(cache, H(1, 2), 0.0)
    serve(cache, H(5, 6, 7, 8), 1.0)  # 1, 2 go down to DRAM
    assert cache.lookup(H(1, 2, 3)) == [0, 2]
    a = cache.acquire(H(1, 2, 3), 2.0, load_id=7)  # its load of 1, 2 starts
    assert a.hits == [0, 2] and a.waits == ()
    b = cache.acquire(H(1, 2, 4), 2.1, load_id=8)  # in HBM by the books, still landing
    assert b.hits == [2, 0] and b.waits == (7,)
    cache.check([a, b])
    cache.landed(7)
    c = cache.acquire(H(1, 2, 5), 2.2, load_id=9)
    assert c.waits == ()
    for got in (a, b, c):
        cache.release(got, 3.0)
    cache.check(final=True)


def test_a_prefetch_lands_only_where_there_is_room_and_is_waited_for():
    cache = BlockCache([3, 10], ["hbm", "dram"])
    serve(cache, H(1, 2), 0.0)
    serve(cache, H(5, 6, 7), 1.0)  # 1, 2 go down
    assert cache.promote(H(1, 2), 2.0, load_id=3) == [0, 2]
    got = cache.acquire(H(1, 2, 9), 2.5, load_id=4)
    assert got.hits == [2, 0] and got.waits == (3,)
    cache.landed(3)
    cache.release(got, 3.0)
    cache.check(final=True)


def test_ttl_pin_yields_at_capacity_instead_of_overflowing():
    cache = BlockCache([3], ["hbm"], "ttl_pin", {"ttl_s": 100.0})
    for t, block in enumerate((10, 20, 30, 40)):  # all four within the TTL
        serve(cache, H(block), float(t))
        cache.check()
    assert cache.used == [3] and cache.stats[0].overflow == 0
    assert cache.lookup(H(10)) == [0]  # the oldest pin yielded


@pytest.mark.parametrize("policy, param", [("ttl_pin", "ttl_s"), ("session_aware", "shared_bonus_s")])
def test_a_policy_without_its_parameter_is_an_error_not_lru(policy, param):
    # a default of 0 made both plain LRU, silently, on the engines that passed no parameters
    with pytest.raises(ValueError, match=f"eviction policy {policy} needs engine.eviction_params.{param}"):
        BlockCache([3], ["hbm"], policy)


def test_writes_down_are_reported_for_timing():
    writes = []
    cache = BlockCache([2, 10], ["hbm", "dram"], on_write=lambda n, src, dst: writes.append((n, src, dst)))
    serve(cache, H(1, 2), 0.0)
    serve(cache, H(5, 6), 1.0)
    assert writes == [(2, 0, 1)]


def test_no_reuse_finds_nothing_and_keeps_nothing():
    cache = BlockCache([10], ["hbm"], reuse=False)
    serve(cache, H(1, 2), 0.0)
    got = cache.acquire(H(1, 2), 1.0)
    assert got.hits == [0] and got.private == 2 and cache.used == [0]
    cache.release(got, 2.0)
    cache.check(final=True)


def test_the_checker_fails_on_a_hand_broken_cache():
    cache = BlockCache([4], ["hbm"])
    serve(cache, H(1, 2), 0.0)
    cache.check(final=True)
    cache.used[0] = 5  # books that disagree with the tree
    with pytest.raises(AssertionError, match="tier counts"):
        cache.check()
    cache.used[0] = 2
    node = next(iter(cache.tree.root.children.values()))
    node.pins = 1  # a pin nobody released
    with pytest.raises(AssertionError):
        cache.check(final=True)


def test_the_checker_fails_on_an_over_full_tier():
    cache = BlockCache([4], ["hbm"])
    serve(cache, H(1, 2, 3, 4), 0.0)
    cache.check(final=True)
    cache.capacity[0] = 3  # 4 unpinned blocks in a 3-block tier: eviction should have run
    with pytest.raises(AssertionError, match="holds 4 blocks > capacity 3 with evictable blocks left"):
        cache.check()


def test_the_checker_fails_on_a_running_call_whose_blocks_are_not_pinned_in_hbm():
    cache = BlockCache([8], ["hbm"])
    got = cache.acquire(H(1, 2, 3), 0.0)
    cache.commit(got, 3, 0.0)
    cache.check([got])
    got.leaf.pins, cache.pinned = 0, 0  # books agree with the tree, but the call lost its pin
    with pytest.raises(AssertionError, match="running call's committed block is not pinned in HBM"):
        cache.check([got])


def test_the_checker_fails_on_a_block_in_a_faster_tier_than_its_ancestor():
    cache = BlockCache([8, 8], ["hbm", "dram"])
    serve(cache, H(1, 2, 3), 0.0)
    serve(cache, H(1, 2, 9), 1.0)  # the run splits: [1, 2] above [3] and [9]
    cache.check(final=True)
    head = cache.tree.root.children[1]
    assert len(head) == 2 and len(head.children) == 2
    head.tier_end = [0, 2]  # [1, 2] moved to DRAM by hand, its children left in HBM
    cache.used[0] -= 2
    cache.used[1] += 2
    with pytest.raises(AssertionError, match="a block in tier 0 below an ancestor that is not"):
        cache.check()
