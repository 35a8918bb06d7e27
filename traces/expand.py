"""Full block lists from the delta form: a prompt is its parent's sequence cut to kept_blocks,
then new_block_hashes. The parent's sequence is its prompt followed by the blocks its output
completed (hashed by the request-id rule), so a child may keep those too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from traces.hashing import output_block_hashes_many, output_blocks_after, unmix64
from traces.io import read_meta, scan


@dataclass(slots=True)
class _Sequence:
    blocks: np.ndarray  # prompt blocks
    input_tokens: int
    output_tokens: int
    children_left: int
    output: np.ndarray | None  # output-completed blocks, if the caller had them


class CallBlocks:
    """The block arrays of a table of calls, flattened once: each call's new prompt blocks and,
    where its own row fixes its last prompt block (it adds blocks, or has none at all), the
    blocks its output completes, hashed for all such calls in one numpy pass."""

    def __init__(self, calls: pl.DataFrame, block_size: int) -> None:
        hashes = calls["new_block_hashes"]
        lens = hashes.list.len().fill_null(0).to_numpy()
        self.flat = hashes.explode().drop_nulls().to_numpy().astype(np.uint64, copy=False)
        self.ends = np.cumsum(lens)
        self.begins = self.ends - lens
        adds = lens > 0
        self.known = adds | (calls["kept_blocks"].to_numpy() == 0)
        states = np.zeros(calls.height, dtype=np.uint64)
        states[adds] = unmix64(self.flat[self.ends[adds] - 1])
        known = self.known
        self.outputs, self.output_offsets = output_block_hashes_many(
            states, calls["request_id"].to_list(), np.where(known, calls["input_tokens"].to_numpy(), 0),
            np.where(known, calls["output_tokens"].to_numpy(), 0), block_size)

    # per-call lookups read plain ints (``item``): slicing by numpy scalars costs more
    def new(self, i: int) -> np.ndarray:
        return self.flat[self.begins.item(i):self.ends.item(i)]

    def output(self, i: int) -> np.ndarray | None:
        """Call i's output blocks, or None where they need its expanded prompt."""
        if not self.known.item(i):
            return None
        return self.outputs[self.output_offsets.item(i):self.output_offsets.item(i + 1)]


class BlockExpander:
    """Expands requests one at a time, parents before children, remembering what children need.

    ``children`` (parent request_id -> number of children) lets it forget a sequence once its
    last child is expanded, so memory follows the calls in flight, not the whole trace.
    """

    def __init__(self, block_size: int, children: Mapping[str, int] | None = None) -> None:
        self.bs = block_size
        self.children = children
        self._seqs: dict[str, _Sequence] = {}

    def sequence(self, request_id: str) -> np.ndarray:
        """Prompt plus output-completed blocks of an expanded request."""
        return np.concatenate([self._seqs[request_id].blocks, self._output(request_id)])

    def keep_output(self, request_id: str, output: np.ndarray) -> None:
        """Remember the output blocks of an expanded call (hashed by the caller) for its children."""
        seq = self._seqs.get(request_id)
        if seq is not None:
            seq.output = output

    def _output(self, request_id: str) -> np.ndarray:
        seq = self._seqs[request_id]
        if seq.output is None:
            seq.output = output_blocks_after(seq.blocks, request_id, seq.input_tokens,
                                             seq.output_tokens, self.bs)
        return seq.output

    def prompt(self, request_id: str, parent_id: str | None, kept_blocks: int,
               new_block_hashes: np.ndarray, input_tokens: int, output_tokens: int,
               output: np.ndarray | None = None) -> np.ndarray:
        """The full block list of one request's prompt (``output``: its output blocks, if the
        caller has them, kept for its children instead of hashed again)."""
        new = np.asarray(new_block_hashes, dtype=np.uint64)
        if parent_id is None or kept_blocks == 0:
            blocks = new
        else:
            if parent_id not in self._seqs:
                raise KeyError(f"request {request_id}: parent {parent_id} not expanded before it")
            parent = self._seqs[parent_id]
            if kept_blocks <= len(parent.blocks):
                blocks = np.concatenate([parent.blocks[:kept_blocks], new])
            else:  # it keeps blocks the parent's output completed
                extra = self._output(parent_id)[:kept_blocks - len(parent.blocks)]
                blocks = np.concatenate([parent.blocks, extra, new])
        if parent_id is not None and parent_id in self._seqs:
            parent = self._seqs[parent_id]
            parent.children_left -= 1
            if self.children is not None and parent.children_left <= 0:
                del self._seqs[parent_id]
        n_children = -1 if self.children is None else self.children.get(request_id, 0)
        if n_children != 0:
            self._seqs[request_id] = _Sequence(blocks, input_tokens, output_tokens, n_children, output)
        return blocks


class CallExpander:
    """Prompt and output block lists of the calls of one table, expanded one at a time in any
    order that puts parents first (the runner's send order; the billing pass's): memory follows
    the sequences that children still need, not the whole trace."""

    def __init__(self, calls: pl.DataFrame, block_size: int) -> None:
        self.bs = block_size
        self.blocks = CallBlocks(calls, block_size)
        self.expander = BlockExpander(block_size, children_counts(calls))

    def expand(self, i: int, request_id: str, parent_id: str | None, kept_blocks: int,
               input_tokens: int, output_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Row i's (prompt blocks, output blocks)."""
        output = self.blocks.output(i)
        blocks = self.expander.prompt(request_id, parent_id, kept_blocks, self.blocks.new(i), input_tokens,
                                      output_tokens, output)
        if output is None:  # its last prompt block comes from its parent: hash it now
            output = output_blocks_after(blocks, request_id, input_tokens, output_tokens, self.bs)
            self.expander.keep_output(request_id, output)
        return blocks, output

    def expand_call(self, i: int, call: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``expand`` of row i, its fields read from ``call`` (a row of the table as a dict)."""
        return self.expand(i, call["request_id"], call["parent_id"], call["kept_blocks"],
                           call["input_tokens"], call["output_tokens"])


def children_counts(frame: pl.DataFrame) -> dict[str, int]:
    counts = frame.filter(pl.col("parent_id").is_not_null()).group_by("parent_id").len()
    return dict(counts.iter_rows())


def expand(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (request_id, full prompt block list) for every request, session by session."""
    meta = read_meta(path)
    frame = scan(path).select(
        "session_id", "turn", "request_id", "parent_id", "kept_blocks", "new_block_hashes",
        "input_tokens", "output_tokens",
    ).sort("session_id", "turn").collect()
    expander = BlockExpander(meta.block_size, children_counts(frame))
    for rid, parent, kept, new, inp, out in frame.select(
        "request_id", "parent_id", "kept_blocks", "new_block_hashes", "input_tokens", "output_tokens"
    ).iter_rows():
        yield rid, expander.prompt(rid, parent, kept, np.array(new, dtype=np.uint64), inp, out)
