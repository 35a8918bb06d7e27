"""The http engine: replays calls against a real OpenAI-compatible server (vLLM, SGLang,
TensorRT-LLM, llama.cpp) with token-id prompts built from the trace's block hashes."""

from engines.http.engine import HttpEngine

__all__ = ["HttpEngine"]
