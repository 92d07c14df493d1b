"""The benchmark script runs end to end and reports the contract's JSON line (no timing is asserted)."""

from __future__ import annotations

import json

import pytest
from launch import REPO, run_python

BENCHMARK = REPO / "benchmarks" / "soup_vs_grpo.py"


def test_benchmark_reports_ratios(tmp_path):
    result = run_python(
        [
            BENCHMARK,
            "--steps",
            "3",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--refresh_interval",
            "4",
            "--batch_size",
            "16",
            "--old_logps_from_loss_forward",
            "--trainer_cpus",
            "0",
            "--output_dir",
            tmp_path,
        ],
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in (
        "mode",
        "prefix_ratio",
        "refresh_interval",
        "step_time_ratio",
        "peak_memory_ratio",
        "critical_path_decode_ratio",
        "total_decode_ratio",
    ):
        assert key in summary, key
    assert summary["mode"] == "local" and summary["refresh_interval"] == 4
    # One GRPO/SOUP pair: its own ratio is the run's, and the spread over pairs is 0.
    assert summary["step_time_ratio_per_repeat"] == [pytest.approx(summary["step_time_ratio"])]
    assert summary["step_time_ratio_spread"] == 0.0
    # Steps 2-3 are relay batches with full-response truncation: the behavior copy decodes whole responses that are
    # then cut, so SOUP decodes more tokens than GRPO (the paper's +27% cost, Sec. 5).
    assert summary["total_decode_ratio"] > 1.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == summary
    # Without prefetching a relay step waits for all of its behavior sampling, and every decoded token is on the
    # critical path.
    soup = saved["medians"]["soup"]
    assert soup["behavior_wait"] > 0 and summary["prefetch"] == 0
    assert summary["critical_path_decode_ratio"] == summary["total_decode_ratio"]
    # With old_logps_from_loss_forward SOUP runs no log-prob forward besides the loss forward, like aligned GRPO.
    assert summary["old_logps_from_loss_forward"] is True
    assert soup["logp_forwards"] == 0.0 and saved["medians"]["grpo"]["logp_forwards"] == 0.0
    assert saved["args"]["trainer_cpus"] == "0" and all(saved["mean_step_time"][k] > 0 for k in ("grpo", "soup"))


def test_benchmark_refuses_prefetch_with_local_backend(tmp_path):
    result = run_python([BENCHMARK, "--prefetch", "1", "--output_dir", tmp_path], timeout=120)
    assert result.returncode == 2 and "--prefetch needs --mode vllm_server" in result.stderr


def test_benchmark_gpu_mode_needs_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --mode gpu runs")
    result = run_python([BENCHMARK, "--mode", "gpu", "--output_dir", tmp_path], timeout=120)
    assert result.returncode == 2 and "--mode gpu needs a CUDA GPU" in result.stderr
