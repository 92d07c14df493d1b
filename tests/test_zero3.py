"""Two-process DeepSpeed ZeRO-3 on CPU through `accelerate launch`: the learner and the behavior snapshot are really
partitioned, the refresh copies the gathered learner exactly, the snapshot stays frozen between refreshes, behavior
log-probs match an independent forward of the gathered snapshot, and snapshot save/load restore full weights.

The run itself is tests/scripts/zero3_train.py (6 steps, T = 3, a mid-window checkpoint at step 5); the accelerate
config is recipes/accelerate_configs/cpu_zero3.yaml. The first run on a machine also JIT-builds DeepSpeed's
shared-memory communication op (cached under ~/.cache/torch_extensions).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from launch import check_ranks, launch_for_result

pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "zero3_train.py"
MAX_STEPS, REFRESH_INTERVAL, WORLD_SIZE = 6, 3, 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zero3_result(tmp_path_factory):
    return launch_for_result(
        "cpu_zero3.yaml", SCRIPT, tmp_path_factory.mktemp("zero3"), timeout=900, what="ZeRO-3 run"
    )


def test_two_deepspeed_zero3_processes(zero3_result):
    for r in check_ranks(zero3_result, WORLD_SIZE, "DEEPSPEED"):
        assert r["zero_stage"] == 3


def test_learner_and_snapshot_are_partitioned(zero3_result):
    for r in zero3_result["ranks"]:
        for model in ("learner_partition", "snapshot_partition"):
            report = r[model]
            assert report["num_zero3_params"] == report["num_params"], (r["rank"], model)
            # The largest matrix: this rank holds half of it, and nothing whole outside a gather.
            assert report["largest_local_numel"] == report["largest_full_numel"] // WORLD_SIZE, (r["rank"], model)
            assert report["largest_data_numel"] == 0, (r["rank"], model)
        # The snapshot is prepared like TRL's reference model (persistence threshold 10 * hidden_size): every
        # parameter is partitioned. The learner keeps the small ones whole (DeepSpeed's default threshold).
        assert r["snapshot_partition"]["num_partitioned"] == r["snapshot_partition"]["num_params"]
        assert r["learner_partition"]["num_partitioned"] >= 6  # the MLP matrices


def test_refresh_schedule_and_prefixes(zero3_result):
    for r in zero3_result["ranks"]:
        batches = r["batches"]
        assert [b["age"] for b in batches] == [step % REFRESH_INTERVAL for step in range(MAX_STEPS)]
        for b in batches:
            relay = b["age"] > 0
            # By default no separate pi_old forward (aligned generation: the loss forward supplies it).
            assert b["relay_record"] == relay and not b["has_old_per_token_logps"], (r["rank"], b)
            if not relay:
                assert b["prefix_tokens"] == 0, (r["rank"], b)
            elif r["rank"] == 0:
                assert 0 < b["prefix_tokens"] < b["completion_tokens"], b
            else:
                # Rank 1 keeps whole behavior responses: no row to continue, while rank 0 continues its rows.
                assert b["rows_without_continuation"] == b["rows"] == 4, b
                assert b["prefix_tokens"] == b["completion_tokens"] > 0, b
    logs = {h["step"]: h for h in zero3_result["log_history"] if "soup/relay_batch" in h}
    assert sorted(logs) == list(range(1, MAX_STEPS + 1))
    assert [logs[s]["soup/relay_batch"] for s in sorted(logs)] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]


def test_refresh_copies_the_gathered_learner_and_the_snapshot_stays_frozen(zero3_result):
    for r in zero3_result["ranks"]:
        batches = r["batches"]
        for b in batches:
            if b["age"] == 0:
                assert b["snapshot_equals_learner"], (r["rank"], b)  # right after a refresh: bit-identical
            else:
                assert b["snapshot_frozen"], (r["rank"], b)
                if b["learner_moved"]:
                    assert not b["snapshot_equals_learner"], (r["rank"], b)
        # The learner did move inside each window, so "frozen" is not vacuous.
        assert any(b.get("learner_moved") for b in batches[:REFRESH_INTERVAL]), r["rank"]
        assert any(b.get("learner_moved") for b in batches[REFRESH_INTERVAL:]), r["rank"]
        assert r["weights_changed"], r["rank"]


def test_behavior_logps_match_an_independent_forward(zero3_result):
    checked = 0
    for r in zero3_result["ranks"]:
        for b in r["batches"]:
            if b["age"] > 0:
                assert b["behavior_logps_max_error"] < 1e-5, (r["rank"], b)
                assert b["behavior_logps_zero_outside_prefix"], (r["rank"], b)
                checked += 1
    assert checked == WORLD_SIZE * 4


def test_snapshot_save_and_load_restore_full_weights(zero3_result):
    for r in zero3_result["ranks"]:
        assert r["checkpoint_snapshot_equal"], r["rank"]  # the mid-window checkpoint holds the gathered snapshot
        assert r["refresh_equals_learner"] and r["refresh_changed_snapshot"], r["rank"]
        assert r["load_restores_snapshot"], r["rank"]
