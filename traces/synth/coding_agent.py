"""Synthetic coding-agent sessions: a shared system prompt and tools, then tool loops.

Each session: the agent version's system prompt and tool definitions (shared by every session
of that version), project context, a task; then 3-7 human prompts, each followed by a loop of
calls whose short outputs are tool calls and whose tool results are appended to the context.
Some calls spawn a subagent (own system prompt per subagent type, fresh context, 3-20 calls)
whose final report returns as a tool result. Past the compaction threshold the context is
replaced by system + tools + a summary. Knobs and the figures they model: conf/trace/coding_agent.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from traces.hashing import string_key
from traces.io import TraceWriter
from traces.synth.chain import Chain
from traces.synth.draws import lognormal, lognormal_int, random_keys, session_starts, uniform_int
from traces.synth.emitter import Call, SessionEmitter


class CodingAgentGenerator:
    def __init__(self, cfg: Mapping[str, Any], rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        self.bs = int(cfg["block_size"])
        n_versions = int(cfg["agent_versions"])
        self.version_keys = [random_keys(rng, 2) for _ in range(n_versions)]
        sub = cfg["subagent"]
        self.sub_keys = random_keys(rng, int(sub["types"]))
        self.sub_system = uniform_int(rng, sub["system_tokens"], int(sub["types"])).tolist()

    def session(self, writer: TraceWriter, session_id: str, start_s: float) -> None:
        cfg, rng, bs = self.cfg, self.rng, self.bs
        emit = SessionEmitter(writer, cfg["workload"], session_id, start_s, cfg["nominal_latency"])
        version = int(rng.integers(len(self.version_keys)))
        sys_key, tools_key = self.version_keys[version]
        chain = Chain(bs)
        chain.add(sys_key, "system", int(cfg["system_tokens"]), header=True)
        chain.add(tools_key, "tools", int(cfg["tools_tokens"]), header=True)
        header_tokens = chain.length
        chain.add(random_keys(rng, 1)[0], "system", int(lognormal_int(rng, cfg["project_tokens"])))
        chain.add(random_keys(rng, 1)[0], "user", int(lognormal_int(rng, cfg["task_tokens"])))

        window = int(cfg["compaction"]["window_tokens"])
        threshold = int(cfg["compaction"]["threshold_tokens"])
        n_prompts = int(uniform_int(rng, cfg["human_prompts"]))
        loops = lognormal_int(rng, cfg["calls_per_prompt"], n_prompts)
        n_calls = int(loops.sum())
        outputs = lognormal_int(rng, cfg["output_tokens"], n_calls)
        results = lognormal_int(rng, cfg["tool_result_tokens"], n_calls)
        tool_s = lognormal(rng, cfg["tool_s"], n_calls)
        spawn = rng.random(n_calls) < float(cfg["subagent"]["probability"])
        result_keys = random_keys(rng, n_calls)

        parent: Call | None = None
        think = 0.0
        i = 0
        for p in range(n_prompts):
            if p > 0:
                think = float(lognormal(rng, cfg["human_pause_s"]))
                chain.add(random_keys(rng, 1)[0], "user", int(lognormal_int(rng, cfg["user_tokens"])))
            for c in range(int(loops[p])):
                if chain.length >= threshold:
                    parent, think = self._compact(emit, chain, parent, think, header_tokens)
                parent = emit.call(chain, "main", parent, think, int(outputs[i]))
                i += 1
                if c == loops[p] - 1:
                    break  # the loop's last call answers the human: no tool runs after it
                if spawn[i]:
                    result, think = self._subagent(emit, parent, session_id)
                else:
                    result, think = int(results[i]), float(tool_s[i])
                room = window - chain.length - int(cfg["output_tokens"]["max"])
                chain.add(result_keys[i], "tool_result", max(1, min(result, room)))

    def _compact(self, emit: SessionEmitter, chain: Chain, parent: Call | None, think: float,
                 header_tokens: int) -> tuple[Call, float]:
        """A summarising call over the full context, then restart from header + summary."""
        summary = int(lognormal_int(self.rng, self.cfg["compaction"]["summary_tokens"]))
        call = emit.call(chain, "main", parent, think, summary)
        chain.truncate(header_tokens)
        chain.add(string_key(call.request_id + "/summary"), "summary", summary)
        return call, 0.0

    def _subagent(self, emit: SessionEmitter, spawner: Call, session_id: str) -> tuple[int, float]:
        """Run a subagent chain after ``spawner``; return its report size and its duration."""
        cfg, rng = self.cfg, self.rng
        sub = cfg["subagent"]
        kind = int(rng.integers(len(self.sub_keys)))
        chain = Chain(self.bs)
        chain.add(self.sub_keys[kind], "system", int(self.sub_system[kind]), header=True)
        chain.add(random_keys(rng, 1)[0], "user", int(lognormal_int(rng, sub["task_tokens"])))
        n = int(uniform_int(rng, sub["calls"]))
        outputs = lognormal_int(rng, cfg["output_tokens"], n)
        results = lognormal_int(rng, cfg["tool_result_tokens"], n)
        tool_s = lognormal(rng, cfg["tool_s"], n)
        keys = random_keys(rng, n)
        parent, think = spawner, float(sub["start_s"])
        for j in range(n):
            parent = emit.call(chain, "subagent", parent, think, int(outputs[j]))
            if j < n - 1:
                chain.add(keys[j], "tool_result", int(results[j]))
                think = float(tool_s[j])
        report = int(lognormal_int(rng, sub["result_tokens"]))
        return report, parent.finish_s - spawner.finish_s + float(sub["start_s"])


def generate(cfg: Mapping[str, Any], writer: TraceWriter, progress=None) -> None:
    rng = np.random.default_rng(int(cfg["seed"]))
    gen = CodingAgentGenerator(cfg, rng)
    n = int(cfg["sessions"])
    starts = session_starts(rng, n, cfg["arrival"])
    for s in range(n):
        gen.session(writer, f"{cfg['session_prefix']}{s:06d}", float(starts[s]))
        if progress is not None:
            progress(s + 1)
