"""The shared block cache: prefix hits per tier, LRU leaf-first eviction, pins, demotion."""

import numpy as np

from engines.kv_cache import BlockCache


def H(*xs):
    return np.array(xs, dtype=np.uint64)


def test_lru_eviction_order_on_a_tiny_hbm_tier():
    cache = BlockCache([3], ["hbm"])
    for t, block in enumerate((10, 20, 30)):  # three one-block prompts at t = 0, 1, 2
        cache.release(cache.acquire(H(block), float(t)), float(t))
    cache.release(cache.acquire(H(10), 3.0), 3.0)  # touch 10: now 20 is least recently used
    cache.release(cache.acquire(H(40), 4.0), 4.0)  # over capacity: evict 20
    assert [cache.lookup(H(b))[0] for b in (10, 20, 30, 40)] == [1, 0, 1, 1]
    cache.release(cache.acquire(H(50), 5.0), 5.0)  # then 30
    assert [cache.lookup(H(b))[0] for b in (10, 20, 30, 40, 50)] == [1, 0, 0, 1, 1]
    assert cache.stats[0].evicted == 2


def test_eviction_takes_the_tail_so_prefixes_stay_cached():
    cache = BlockCache([3], ["hbm"])
    cache.release(cache.acquire(H(1, 2, 3), 0.0), 0.0)
    cache.release(cache.acquire(H(9), 1.0), 1.0)
    assert cache.lookup(H(1, 2, 3)) == [2]  # block 3 went, 1 and 2 stayed


def test_headroom_evicts_down_to_a_low_watermark():
    # 200 blocks with 1% headroom: once full, evict until 198 are used (two blocks free)
    for headroom, left_of_a in ((0.0, 99), (0.01, 97)):
        cache = BlockCache([200], ["hbm"], headroom=headroom)
        cache.release(cache.acquire(np.arange(1, 101, dtype=np.uint64), 0.0), 0.0)  # A: 100 blocks
        cache.release(cache.acquire(np.arange(1001, 1101, dtype=np.uint64), 1.0), 1.0)  # B: 100
        cache.release(cache.acquire(H(5000), 2.0), 2.0)  # one block over: A (least recent) pays
        assert cache.lookup(np.arange(1, 101, dtype=np.uint64)) == [left_of_a]
        assert cache.used == [left_of_a + 101]
    cache.release(cache.acquire(H(6000), 3.0), 3.0)  # fits in the headroom: nothing evicted
    assert cache.used == [199] and cache.stats[0].evicted == 3


def test_pinned_blocks_are_not_evicted():
    cache = BlockCache([2], ["hbm"])
    held = cache.acquire(H(1, 2), 0.0)
    cache.release(cache.acquire(H(7, 8), 1.0), 1.0)
    assert cache.lookup(H(1, 2)) == [2] and cache.lookup(H(7, 8)) == [0]
    cache.release(held, 2.0)
    assert cache.used == [2]


def test_demotion_to_a_lower_tier_and_load_back():
    cache = BlockCache([2, 10], ["hbm", "dram"])
    cache.release(cache.acquire(H(1, 2), 0.0), 0.0)
    cache.release(cache.acquire(H(5, 6), 1.0), 1.0)  # 1, 2 move to DRAM
    assert cache.lookup(H(1, 2)) == [0, 2]
    got = cache.acquire(H(1, 2, 3), 2.0)
    assert got.hits == [0, 2] and cache.stats[1].loaded == 2
    # while pinned the request overflows HBM by one block; 5, 6 went down to make room
    assert cache.lookup(H(5, 6)) == [0, 2] and cache.stats[0].overflow == 1
    cache.release(got, 2.0)
    # released: its tail block 3 is the LRU leaf and moves down
    assert cache.lookup(H(1, 2, 3)) == [2, 1]
    assert cache.used == [2, 3]


def test_reusable_cap_counts_cached_last_block_as_recomputed():
    cache = BlockCache([10], ["hbm"])
    cache.release(cache.acquire(H(1, 2), 0.0), 0.0)
    assert cache.acquire(H(1, 2), 1.0, reusable=1).hits == [1]


def test_last_tier_drops_lru():
    cache = BlockCache([1, 1], ["hbm", "dram"])
    for t, b in enumerate((1, 2, 3)):
        cache.release(cache.acquire(H(b), float(t)), float(t))
    assert cache.lookup(H(3)) == [1, 0] and cache.lookup(H(2)) == [0, 1] and cache.lookup(H(1)) == [0, 0]
    assert cache.stats[1].evicted == 1


def test_only_the_last_tier_hands_dropped_runs_on():
    handed = []
    cache = BlockCache([1, 1], ["hbm", "dram"], admit_min_uses=2,
                       on_drop=lambda hashes, now: handed.append(hashes.tolist()))
    cache.release(cache.acquire(H(1), 0.0), 0.0)  # used once: refused by DRAM's admission
    cache.release(cache.acquire(H(2), 1.0), 1.0)
    assert handed == [] and cache.stats[0].dropped == 1
    for t in (2.0, 3.0):
        cache.release(cache.acquire(H(2), t), t)  # used three times: admitted to DRAM
    cache.release(cache.acquire(H(5), 4.0), 4.0)
    cache.release(cache.acquire(H(5), 5.0), 5.0)
    cache.release(cache.acquire(H(6), 6.0), 6.0)
    cache.release(cache.acquire(H(6), 7.0), 7.0)
    assert [2] in handed  # DRAM (the last tier) let block 2 go: it is handed on
