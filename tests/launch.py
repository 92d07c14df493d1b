"""Run a repository script in a subprocess: plainly (`run_python`), or under `accelerate launch` as the multi-process
tests do (`accelerate_launch`). Helpers, not a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vllm_server import skip_if_kv_cache_refused

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate_configs"
QUIET = dict(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
"""One thread per process, no tokenizer threads, no transformers warnings: what the multi-process runs set."""


def repo_environment(**extra: str) -> dict[str, str]:
    """`os.environ` with the repository first on PYTHONPATH and the Hugging Face hub offline, then `extra`."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def run_python(
    argv: list, *, timeout: int, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`python argv...` (each item as `str`) in a subprocess with `repo_environment(**env)`, both streams captured as
    text; the exit status is the caller's to check."""
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        cwd=cwd,
        env=repo_environment(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def launcher(config: str) -> list[str]:
    """The `python` arguments that run a script under `accelerate launch` with recipes/accelerate_configs/<config>."""
    return ["-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config)]


def accelerate_launch(
    config: str,
    script: Path,
    args: list[str],
    cwd: Path,
    *,
    timeout: int,
    what: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate_configs/<config> script args...` with the repository on
    PYTHONPATH and one thread per process; fails the test with the tail of both streams if it times out or exits
    non-zero."""
    try:
        process = run_python(
            [*launcher(config), script, *args], cwd=cwd, env={**QUIET, **(env or {})}, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(
            f"{what} timed out after {timeout} s (a collective out of step hangs).\n"
            f"stdout:\n{error.stdout}\nstderr:\n{error.stderr}"
        )
    if process.returncode != 0:
        skip_if_kv_cache_refused(process.stderr)  # a vLLM engine in the run found too little free memory
        pytest.fail(
            f"{what} exited with {process.returncode}.\nstdout (tail):\n{process.stdout[-5000:]}\n"
            f"stderr (tail):\n{process.stderr[-20000:]}"
        )
    return process


def launch_for_result(config: str, script: Path, out: Path, *, timeout: int, what: str) -> dict:
    """`accelerate_launch` of `script <out>/result.json`; returns the JSON its main process wrote there, with the
    reports every rank wrote to `<out>/result.rank<r>.json` (tests/scripts/common.py `rank_result_path`) as
    `"ranks"`, in rank order."""
    result_path = out / "result.json"
    process = accelerate_launch(config, script, [str(result_path)], out, timeout=timeout, what=what)
    assert result_path.exists(), f"the main process wrote no result file.\nstderr:\n{process.stderr[-20000:]}"
    result = json.loads(result_path.read_text())
    rank_paths = sorted(out.glob("result.rank*.json"), key=lambda path: int(path.stem.rsplit("rank", 1)[1]))
    if rank_paths:
        result["ranks"] = [json.loads(path.read_text()) for path in rank_paths]
    return result


def check_ranks(result: dict, world_size: int, distributed_type: str) -> list[dict]:
    """Asserts that `result` (from `launch_for_result`) holds one report per rank, in rank order, each from a run of
    `world_size` processes of accelerate's `distributed_type` (e.g. "MULTI_CPU"); returns the reports."""
    ranks = result["ranks"]
    assert [r["rank"] for r in ranks] == list(range(world_size))
    for r in ranks:
        assert r["world_size"] == world_size
        assert r["distributed_type"] == f"DistributedType.{distributed_type}"
    return ranks
