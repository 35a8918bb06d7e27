"""What each server dialect sends and how its streamed replies are read.

Each dialect adds only the request fields its server accepts (TensorRT-LLM's OpenAI server
rejects unknown fields) and reads the server's own prompt-token and cached-token counts:

- ``openai``: ``/v1/completions``, standard fields only; cached tokens from
  ``usage.prompt_tokens_details.cached_tokens`` if the server sends it; no output ids.
- ``vllm``: ``/v1/completions`` plus ``ignore_eos``, ``min_tokens``, ``return_token_ids``
  (chunks carry ``choices[0].token_ids``); cached tokens need ``--enable-prompt-tokens-details``.
- ``sglang``: native ``/generate`` with ``input_ids``; ``meta_info.cached_tokens`` and
  ``output_ids`` (cumulative or incremental, by server version: both are read).
- ``llamacpp``: native ``/completion`` with ``cache_prompt`` and ``return_tokens`` (chunks carry
  ``tokens``); cached tokens are ``timings.cache_n``, the prompt ``cache_n + prompt_n``.
- ``trtllm``: ``/v1/completions`` plus ``ignore_eos`` and ``min_tokens``; no output ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    """What one streamed reply said, filled chunk by chunk."""

    chunks: int = 0  # chunks that carried output (a token or text)
    output_ids: list[int] = field(default_factory=list)
    ids_returned: bool = False  # the server sent output ids (a child may reuse the decode KV)
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False  # the server said the reply is complete


def _usage(reply: Reply, usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    reply.prompt_tokens = usage.get("prompt_tokens", reply.prompt_tokens)
    reply.completion_tokens = usage.get("completion_tokens", reply.completion_tokens)
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        reply.cached_tokens = int(details["cached_tokens"])


class Dialect:
    """``/v1/completions`` with the standard OpenAI fields."""

    name = "openai"
    path = "/v1/completions"
    returns_ids = False

    def body(self, model: str, ids: list[int], max_tokens: int) -> dict[str, Any]:
        return {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.0,
                "stream": True, "stream_options": {"include_usage": True}, **self.extra(max_tokens)}

    def extra(self, max_tokens: int) -> dict[str, Any]:
        return {}

    def read(self, event: dict[str, Any], reply: Reply) -> None:
        """Fold one streamed event into ``reply``."""
        _usage(reply, event.get("usage"))
        for choice in event.get("choices") or []:
            ids = choice.get("token_ids")
            if ids:
                reply.output_ids.extend(ids)
                reply.ids_returned = True
            if ids or choice.get("text"):
                reply.chunks += 1
            if choice.get("finish_reason"):
                reply.done = True


class VllmDialect(Dialect):
    name = "vllm"
    returns_ids = True

    def extra(self, max_tokens: int) -> dict[str, Any]:
        return {"ignore_eos": True, "min_tokens": max_tokens, "return_token_ids": True}


class TrtllmDialect(Dialect):
    name = "trtllm"

    def extra(self, max_tokens: int) -> dict[str, Any]:
        return {"ignore_eos": True, "min_tokens": max_tokens}


class SglangDialect(Dialect):
    name = "sglang"
    path = "/generate"
    returns_ids = True

    def body(self, model: str, ids: list[int], max_tokens: int) -> dict[str, Any]:
        return {"input_ids": ids, "stream": True,
                "sampling_params": {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens,
                                    "ignore_eos": True, "temperature": 0.0}}

    def read(self, event: dict[str, Any], reply: Reply) -> None:
        meta = event.get("meta_info") or {}
        ids = event.get("output_ids")
        done_so_far = meta.get("completion_tokens")
        if ids is not None:
            reply.ids_returned = True
            if done_so_far is not None and len(ids) == done_so_far:  # cumulative
                new = len(ids) > len(reply.output_ids)
                reply.output_ids = list(ids)
            else:  # incremental
                new = bool(ids)
                reply.output_ids.extend(ids)
            reply.chunks += new
        elif event.get("text"):
            reply.chunks += 1
        reply.prompt_tokens = meta.get("prompt_tokens", reply.prompt_tokens)
        reply.completion_tokens = done_so_far if done_so_far is not None else reply.completion_tokens
        if meta.get("cached_tokens") is not None:
            reply.cached_tokens = int(meta["cached_tokens"])
        if meta.get("finish_reason"):
            reply.done = True


class LlamacppDialect(Dialect):
    name = "llamacpp"
    path = "/completion"
    returns_ids = True

    def body(self, model: str, ids: list[int], max_tokens: int) -> dict[str, Any]:
        return {"prompt": ids, "n_predict": max_tokens, "ignore_eos": True, "temperature": 0.0,
                "stream": True, "cache_prompt": True, "return_tokens": True}

    def read(self, event: dict[str, Any], reply: Reply) -> None:
        ids = event.get("tokens")
        if ids:
            reply.output_ids.extend(ids)
            reply.ids_returned = True
        if ids or event.get("content"):
            reply.chunks += 1
        timings = event.get("timings")
        if timings:
            cache_n, prompt_n = timings.get("cache_n"), timings.get("prompt_n")
            if cache_n is not None:
                reply.cached_tokens = int(cache_n)
                if prompt_n is not None:
                    reply.prompt_tokens = int(cache_n) + int(prompt_n)
            if timings.get("predicted_n") is not None:
                reply.completion_tokens = int(timings["predicted_n"])
        if event.get("stop"):
            reply.done = True


DIALECTS: dict[str, Dialect] = {d.name: d for d in (Dialect(), VllmDialect(), TrtllmDialect(),
                                                     SglangDialect(), LlamacppDialect())}
