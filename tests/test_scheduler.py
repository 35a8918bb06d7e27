"""The offload engine's scheduler alone: a hand-built instance state in, a plan out."""

import numpy as np
from conftest import conf

from engines.base import Request
from engines.kv_cache import BlockCache
from engines.offload.scheduler import Instance, Scheduler, Seq
from engines.roofline import Roofline
from engines.specs import HardwareSpec, ModelSpec

BS = 16


def seq(name, *, prefill_left=0, context=0, decode_left=0, loads_pending=0):
    req = Request(name, name, 0, "test", 0.0, 100, 10, np.arange(1, 7, dtype=np.uint64), BS,
                  np.empty(0, dtype=np.uint64))
    return Seq(request=req, blocks=req.blocks, arrival_s=0.0, prefill_left=prefill_left, context=context,
               decode_left=decode_left, loads_pending=loads_pending)


def test_the_scheduler_plans_admissions_chunks_fast_forward_and_preemption_by_hand():
    roof = Roofline(ModelSpec.from_cfg(conf("model", "llama3_1_8b")),
                    HardwareSpec.from_cfg(conf("hardware", "h100_sxm")), 1)
    sched = Scheduler(roof, BS, max_batched_tokens=100, max_running=5, overlap_load=False)
    inst = Instance(0, BlockCache([1000]), BS, 1)
    a = seq("a", context=50, decode_left=10)         # decoding
    b = seq("b", prefill_left=70, context=16)        # prefilling, 16 tokens cached
    c = seq("c", prefill_left=200, loads_pending=1)  # its cached KV still landing: no chunk
    d, e = seq("d"), seq("e")                        # queued
    inst.running = [a, b, c]
    inst.waiting.extend([d, e])
    # budget 100 - 1 decoding = 99; b takes 70; 29 left and a free slot: try the queue's head
    plan = sched.plan(inst, 5.0)
    assert plan.admit is d and plan.step is None
    # the engine admitted d (20 tokens to compute, nothing to load): 9 tokens left, try e
    d.prefill_left = 20
    inst.running.append(inst.waiting.popleft())
    assert sched.plan(inst, 5.0, admitted=1).admit is e
    # e did not fit: the step runs b's 70 and d's 20 beside a's decode
    plan = sched.plan(inst, 5.0, admitted=1, blocked=True)
    step = plan.step
    assert plan.admit is None and step.start_s == 5.0 and step.steps == 1
    assert [(s.request.request_id, n) for s, n in step.chunks] == [("b", 70), ("d", 20)]
    assert step.decoding == [a]
    assert step.step_s == roof.step_s([(70, 16), (20, 0)], 1, 50.0)
    # had d needed 40, its chunk would take the last 29 tokens and nothing more is admitted
    d.prefill_left = 40
    step = sched.plan(inst, 5.0, admitted=1).step
    assert [(s.request.request_id, n) for s, n in step.chunks] == [("b", 70), ("d", 29)]

    # only a decodes (10 tokens left) and a transfer ends 3.5 steps from now: 4 steps, at the
    # mean context of contexts 50..53
    inst.running, inst.waiting = [a], type(inst.waiting)()
    one = roof.step_s([], 1, 50.0)
    step = sched.plan(inst, 5.0, next_external_s=5.0 + 3.5 * one).step
    assert step.steps == 4 and step.step_s == roof.step_s([], 1, 51.5)
    assert sched.plan(inst, 5.0).step.steps == 10  # nothing outside: to its last token
    # HBM nearly full (1 free block < 2 per decoder): up to its block boundary, 64 - 60 = 4 steps
    inst.cache.reserved = 999
    a.context = 60
    assert sched.plan(inst, 5.0).step.steps == 4

    # preemption: the running calls' KV (1,001 blocks) outgrew HBM (1,000): the latest admitted
    # goes, while another runs
    inst.running = [a, b]
    inst.cache.reserved = 1001
    assert sched.victim(inst) is b
    inst.running = [a]
    assert sched.victim(inst) is None
    inst.running, inst.cache.reserved = [a, b], 1000
    assert sched.victim(inst) is None
