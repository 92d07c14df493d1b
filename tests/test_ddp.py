"""Two-process DDP on CPU (gloo) through `accelerate launch`: relay sampling and the refresh schedule stay in lock-step
across ranks, the replicas stay identical, and the soup/ metrics are reduced over both ranks.

The run itself is tests/scripts/ddp_train.py (6 steps, T = 3, one generation batch per step); the accelerate config is
recipes/accelerate_configs/cpu_ddp.yaml.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from launch import check_ranks, launch_for_result

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "ddp_train.py"
MAX_STEPS, REFRESH_INTERVAL, WORLD_SIZE = 6, 3, 2
RELAY_STEPS = [step for step in range(1, MAX_STEPS + 1) if (step - 1) % REFRESH_INTERVAL > 0]  # 2, 3, 5, 6
REFRESH_STEPS = [step for step in range(1, MAX_STEPS + 1) if step not in RELAY_STEPS]  # 1, 4


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory):
    return launch_for_result("cpu_ddp.yaml", SCRIPT, tmp_path_factory.mktemp("ddp"), timeout=600, what="DDP run")


def _step_logs(result):
    """The per-step training logs, keyed by global step (the final summary entry has no soup/ keys)."""
    logs = {h["step"]: h for h in result["log_history"] if "soup/relay_batch" in h}
    assert sorted(logs) == list(range(1, MAX_STEPS + 1)), sorted(logs)
    return logs


pytestmark = pytest.mark.slow


def test_two_gloo_processes(ddp_result):
    for r in check_ranks(ddp_result, WORLD_SIZE, "MULTI_CPU"):
        assert r["backend"] == "gloo"


def test_relay_batch_metric_follows_the_refresh_schedule(ddp_result):
    logs = _step_logs(ddp_result)
    for step in RELAY_STEPS:
        assert logs[step]["soup/relay_batch"] == 1.0, step
        assert logs[step]["soup/prefix_fraction"] > 0.0, step
        assert logs[step]["soup/behavior_age"] == (step - 1) % REFRESH_INTERVAL, step
        assert logs[step]["soup/log_ratio/prefix_abs_mean"] is not None, step
    for step in REFRESH_STEPS:
        assert logs[step]["soup/relay_batch"] == 0.0, step
        assert logs[step]["soup/prefix_fraction"] == 0.0, step
        assert logs[step]["soup/behavior_age"] == 0.0, step
        assert "soup/refresh_time" in logs[step], step


def test_prefix_fraction_is_reduced_over_both_ranks(ddp_result):
    """soup/prefix_fraction = prefix tokens / completion tokens summed over ranks (not rank 0's own share)."""
    logs = _step_logs(ddp_result)
    batches = [r["batches"] for r in ddp_result["ranks"]]
    for step in range(1, MAX_STEPS + 1):
        prefix = sum(b[step - 1]["prefix_tokens"] for b in batches)
        total = sum(b[step - 1]["completion_tokens"] for b in batches)
        assert math.isclose(logs[step]["soup/prefix_fraction"], prefix / total, rel_tol=1e-5), step


def test_every_rank_ran_relay_batches(ddp_result):
    for r in ddp_result["ranks"]:
        ages = [b["age"] for b in r["batches"]]
        assert ages == [(step - 1) % REFRESH_INTERVAL for step in range(1, MAX_STEPS + 1)], (r["rank"], ages)
        for step, batch in enumerate(r["batches"], start=1):
            relay = step in RELAY_STEPS
            assert batch["relay_record"] == relay, (r["rank"], step)
            # By default a relay batch carries no separate pi_old (aligned generation: the loss forward supplies it).
            assert not batch["has_old_per_token_logps"], (r["rank"], step)
            if relay:
                assert 0 < batch["prefix_tokens"] < batch["completion_tokens"], (r["rank"], step)
            else:
                assert batch["prefix_tokens"] == 0, (r["rank"], step)
        assert r["ok"], r


def test_ranks_see_different_prompts(ddp_result):
    rank0, rank1 = (r["batches"] for r in ddp_result["ranks"])
    for step, (a, b) in enumerate(zip(rank0, rank1, strict=True), start=1):
        assert a["num_completions"] == b["num_completions"] == 4
        assert set(a["prompts"]).isdisjoint(b["prompts"]), step


def test_replicas_and_behavior_snapshots_are_identical(ddp_result):
    for r in ddp_result["ranks"]:
        assert r["weights_equal_rank0"], r["rank"]
        assert r["behavior_equal_rank0"], r["rank"]
        assert r["weights_changed"], r["rank"]  # training did move the weights: the comparison is not vacuous
        checksums = r["checksums"]
        assert len(checksums) == WORLD_SIZE
        assert all(c == checksums[0] for c in checksums), checksums
