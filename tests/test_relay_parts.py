"""The trainer's delegates, without a model: relay planning and assembly, the typed records, the checkpoint state,
the prefetch schedule and the soup/ metrics, each against an independent computation."""

from __future__ import annotations

import math
import types

import pytest
import torch

from trl_soup.behavior.base import BehaviorSamples
from trl_soup.behavior.prefetch import prefetch_schedule
from trl_soup.metrics import (
    composition_metrics,
    composition_sums,
    continuation_ratio_summary,
    importance_sampling_metrics,
    position_metrics,
    position_sums,
    relay_length_metrics,
    segment_metrics,
    segment_statistic_values,
    segment_statistics_sums,
)
from trl_soup.records import LossCapture, RelayRecord
from trl_soup.relay import assemble_relay, plan_continuations, relay_generation, restrict_vllm_correction
from trl_soup.state import SOUP_STATE_FILE, SOUPState, load_rng_state, save_rng_state

EOS = 1


def make_samples(responses: list[list[int]], width: int = 6) -> BehaviorSamples:
    """Right-padded behavior samples; log-prob of token j in row i is -(10 * i + j) / 100 (distinct values)."""
    ids = torch.zeros(len(responses), width, dtype=torch.long)
    mask = torch.zeros(len(responses), width, dtype=torch.long)
    for i, r in enumerate(responses):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    logps = -(torch.arange(len(responses)).unsqueeze(1) * 10 + torch.arange(width)).float() / 100
    ended = torch.tensor([len(r) > 0 and r[-1] == EOS for r in responses])
    return BehaviorSamples(ids, mask, logps * mask, torch.ones(len(responses), width), ended)


# Row 0: no EOS, 4 tokens; row 1: ends in EOS after 3 tokens; row 2: 6 tokens (the whole budget of 6), no EOS.
RESPONSES = [[5, 6, 7, 8], [5, 6, EOS], [9, 9, 9, 9, 9, 9]]
PROMPTS = [[2, 3], [2, 4], [2, 5]]


def test_plan_continuations_applies_the_relay_rule_per_row():
    samples = make_samples(RESPONSES)
    plan = plan_continuations(PROMPTS, samples, torch.tensor([2, 3, 6]), max_completion_length=6)
    assert plan.prefixes == [[5, 6], [5, 6, EOS], [9] * 6]
    # Row 1 kept its whole EOS-terminated response, row 2 has no budget left: both final.
    assert plan.finished.tolist() == [False, True, True]
    assert plan.budgets.tolist() == [4, 0, 0]
    assert plan.sent == [0] and plan.requests == [[2, 3, 5, 6]]
    assert plan.max_budget == 4
    every = plan_continuations(PROMPTS, samples, torch.tensor([2, 3, 6]), 6, send_every_row=True)
    assert every.sent == [0, 1, 2] and every.requests[1] == [2, 4, 5, 6, EOS]
    none_left = plan_continuations(PROMPTS, samples, torch.tensor([4, 3, 6]), max_completion_length=4)
    assert none_left.finished.all() and none_left.max_budget == 1  # one throw-away token for collectives


def test_assemble_relay_cuts_each_continuation_to_its_own_budget():
    samples = make_samples(RESPONSES)
    plan = plan_continuations(PROMPTS, samples, torch.tensor([1, 3, 2]), max_completion_length=6, send_every_row=True)
    answers = [[40, 41, 42, 43, 44, 45], [50], [60, 61, 62, 63, 64, 65]]  # longer than row 0's budget of 5
    logps = [[-0.1 * k for k in range(6)], [-0.5], [-0.2 * k for k in range(6)]]
    completions, sampling, record = assemble_relay(plan, samples, (answers, logps), nan_prefix_logps=True)
    assert completions == [[5, 40, 41, 42, 43, 44], [5, 6, EOS], [9, 9, 60, 61, 62, 63]]
    assert [len(c) for c in completions] == [6, 3, 6]
    assert all(math.isnan(x) for x in sampling[0][:1]) and sampling[0][1:] == logps[0][:5]
    assert len(sampling[1]) == 3 and all(math.isnan(x) for x in sampling[1])  # the final row's answer is dropped
    assert sampling[2][2:] == logps[2][:4]
    assert record.prefix_lengths.tolist() == [1, 3, 2]
    assert record.no_continuation.tolist() == [False, True, False]
    assert record.behavior_completion_ids == RESPONSES[:2] + [[9] * 6]
    for i, k in enumerate([1, 3, 2]):
        torch.testing.assert_close(record.prefix_logps[i], samples.per_token_logps[i, :k])
    without = assemble_relay(plan, samples, None)
    assert without[0] == [[5], [5, 6, EOS], [9, 9]] and without[1] is None


def test_relay_generation_calls_the_policy_once_with_the_largest_budget():
    samples = make_samples(RESPONSES)
    args = types.SimpleNamespace(prefix_strategy="ratio", prefix_ratio=0.5)
    calls = []

    def continue_fn(requests, max_new_tokens):
        calls.append((requests, max_new_tokens))
        return [[70 + k] * max_new_tokens for k in range(len(requests))], None

    completions, sampling, record = relay_generation(
        PROMPTS, samples, args, torch.Generator(), continue_fn, max_completion_length=6
    )
    # Ratio 0.5: prefix lengths round-half-up(4/2, 3/2, 6/2) = 2, 2, 3; no prefix is final.
    assert record.prefix_lengths.tolist() == [2, 2, 3]
    assert calls == [([[2, 3, 5, 6], [2, 4, 5, 6], [2, 5, 9, 9, 9]], 4)]
    assert completions == [[5, 6, 70, 70, 70, 70], [5, 6, 71, 71, 71, 71], [9, 9, 9, 72, 72, 72]]
    assert sampling is None
    calls.clear()
    relay_generation(
        PROMPTS,
        samples,
        args,
        torch.Generator(),
        continue_fn,
        max_completion_length=6,
        reduce_max=lambda budget: budget + 3,
    )
    assert calls[0][1] == 7  # every rank asks for the largest budget of any rank
    args.prefix_ratio = 1.0
    calls.clear()
    finished = make_samples([[5, EOS], [6, EOS], [7, EOS]])
    relay_generation(PROMPTS, finished, args, torch.Generator(), continue_fn, max_completion_length=6)
    assert calls == []  # every prefix final, no collective: no generation at all
    relay_generation(PROMPTS, finished, args, torch.Generator(), continue_fn, max_completion_length=6, collective=True)
    assert calls == [([PROMPTS[0]], 1)]  # a collective generation still runs, with one throw-away request


def test_relay_record_tensors():
    record = RelayRecord(
        prefix_lengths=torch.tensor([2, 0, 1]),
        prefix_logps=[torch.tensor([-0.5, -0.25]), torch.tensor([]), torch.tensor([-1.0])],
        behavior_lengths=torch.tensor([4, 3, 1]),
        no_continuation=torch.tensor([False, False, True]),
        behavior_completion_ids=[[1, 2, 3, 4], [1, 2, 3], [7]],
    )
    expected = torch.tensor([[-0.5, -0.25, 0, 0], [0, 0, 0, 0], [-1.0, 0, 0, 0]])
    assert torch.equal(record.behavior_per_token_logps(4, "cpu"), expected)
    assert record.length_sums("cpu").tolist() == [3.0, 8.0, 1.0, 3.0]
    metrics = relay_length_metrics({"lengths": record.length_sums("cpu")})
    assert metrics == pytest.approx(
        {"soup/prefix_length/mean": 1.0, "soup/behavior_length/mean": 8 / 3, "soup/no_continuation_fraction": 1 / 3}
    )


def test_loss_capture_fills_the_deferred_denominator_once():
    prefix_mask = torch.tensor([[1, 1, 0, 0]])
    capture = LossCapture(
        deferred_denominator=torch.tensor([[-0.1, -0.2, 0.0, 0.0]]), deferred_prefix_mask=prefix_mask
    )
    denominator = capture.deferred_denominator
    first = torch.tensor([[-1.0, -2.0, -3.0, -4.0]], requires_grad=True)
    capture.record(first, None)
    assert torch.equal(denominator, torch.tensor([[-0.1, -0.2, -3.0, -4.0]]))  # Eq. 5: behavior, then pi_old
    assert not capture.per_token_logps.requires_grad and capture.entropies is None
    capture.record(torch.full((1, 4), -9.0), torch.ones(1, 4))  # a second forward only records
    assert torch.equal(denominator, torch.tensor([[-0.1, -0.2, -3.0, -4.0]]))
    assert torch.equal(capture.entropies, torch.ones(1, 4))


def test_soup_state_round_trip_and_refusals(tmp_path):
    SOUPState(generation_batch_index=5, behavior_refresh_interval=4, behavior_snapshot=True).save(str(tmp_path))
    raw = torch.load(tmp_path / SOUP_STATE_FILE, weights_only=True)
    assert raw == {
        "generation_batch_index": 5,
        "behavior_refresh_interval": 4,
        "behavior_snapshot": True,
        "refresh_schedule": None,
        "behavior_pool_size": None,
    }
    assert SOUPState.load(str(tmp_path), 4) == SOUPState(5, 4, True)
    # A checkpoint of 0.1 (no refresh_schedule): its refreshes were at multiples of T.
    assert SOUPState(5, 4, True).schedule().last_refresh == 4
    assert SOUPState(8, 4, False).schedule().last_refresh == 4  # batch 8 refreshes (T reached)
    assert SOUPState(0, 4, False).schedule().last_refresh is None
    with pytest.raises(ValueError, match="behavior_refresh_interval=4.*uses 8"):
        SOUPState.load(str(tmp_path), 8)
    with pytest.raises(FileNotFoundError, match="not written by SOUPTrainer"):
        SOUPState.load(str(tmp_path / "missing"), 4)
    generator = torch.Generator().manual_seed(3)
    torch.rand(5, generator=generator)
    save_rng_state(str(tmp_path), 1, generator)
    expected = torch.rand(4, generator=generator)
    restored = torch.Generator().manual_seed(0)
    load_rng_state(str(tmp_path), 1, restored)
    assert torch.equal(torch.rand(4, generator=restored), expected)
    untouched = torch.Generator().manual_seed(0)
    load_rng_state(str(tmp_path), 0, untouched)  # no file for rank 0: left as it is
    assert torch.equal(torch.rand(2, generator=untouched), torch.rand(2, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("every,step", [(1, 0), (2, 0), (4, 2), (3, 1)])
@pytest.mark.parametrize("current,T,ahead,total", [(1, 4, 2, 100), (2, 4, 3, 100), (3, 4, 2, 100), (5, 8, 4, 7)])
def test_prefetch_schedule_matches_a_simulation_of_the_iterator(every, step, current, T, ahead, total):
    """Simulate TRL's loop: micro-step s reads iterator batch s - step (0 = the current batch) and a generation
    happens when s % every == 0; the k-th generation after now is batch `current + k`."""
    generations = []  # (generation batch index, iterator offset) of the generations after the current one
    s = step + 1
    while len(generations) < ahead:
        if s % every == 0:
            generations.append((current + len(generations) + 1, s - step))
        s += 1
    expected = []
    for index, offset in generations:
        if index // T != current // T or index >= total:
            break
        expected.append((index, offset))
    window_end = current // T * T + T  # the fixed policy's windows: [k T, (k + 1) T)
    assert prefetch_schedule(current, window_end, ahead, every, step, total) == expected
    assert prefetch_schedule(current, None, ahead, every, step, total) == []  # no window yet


def test_segment_metrics_against_loops():
    torch.manual_seed(0)
    logps = -torch.rand(3, 5)
    denominator = logps + 0.3 * torch.randn(3, 5)
    advantages = torch.tensor([1.0, -1.0, 0.5])
    entropies = torch.rand(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    prefix_mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    values = segment_statistic_values(logps, denominator, advantages, entropies, 0.2, 0.28)
    metrics = segment_metrics(segment_statistics_sums(values, mask, prefix_mask))
    for segment, wanted in (("prefix", 1), ("continuation", 0)):
        cells = [(i, j) for i in range(3) for j in range(5) if mask[i, j] and prefix_mask[i, j] == wanted]
        ratio = {c: math.exp(logps[c] - denominator[c]) for c in cells}
        clipped = [
            (ratio[c] < 0.8 and advantages[c[0]] < 0) or (ratio[c] > 1.28 and advantages[c[0]] > 0) for c in cells
        ]
        assert metrics[f"soup/clip_ratio/{segment}"] == pytest.approx(sum(clipped) / len(cells))
        abs_mean = sum(abs(float(logps[c] - denominator[c])) for c in cells) / len(cells)
        assert metrics[f"soup/log_ratio/{segment}_abs_mean"] == pytest.approx(abs_mean, rel=1e-5)
        kl = [math.exp(float(logps[c] - denominator[c])) - 1 - float(logps[c] - denominator[c]) for c in cells]
        assert metrics[f"soup/kl/{segment}"] == pytest.approx(sum(kl) / len(cells), rel=1e-5)
        assert metrics[f"soup/entropy/{segment}"] == pytest.approx(
            sum(float(entropies[c]) for c in cells) / len(cells)
        )
    on_policy = segment_statistic_values(logps, None, advantages, None, 0.2, 0.28)
    assert set(on_policy) == {"clip_ratio", "log_ratio", "kl"} and float(on_policy["log_ratio"].abs().max()) == 0.0
    assert float(on_policy["kl"].abs().max()) == 0.0
    assert composition_metrics(composition_sums(prefix_mask, mask)) == {"soup/prefix_fraction": pytest.approx(5 / 12)}


def test_position_metrics_by_relative_position():
    values = {"entropy": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]]), "log_ratio": torch.zeros(2, 4)}
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    metrics = position_metrics(position_sums(values, mask, num_bins=2))
    # Row 0: tokens 0-1 in bin 0, 2-3 in bin 1; row 1 (2 tokens): token 0 in bin 0, token 1 in bin 1.
    assert metrics == {"soup/position/entropy/bin_0": (1 + 2 + 5) / 3, "soup/position/entropy/bin_1": (3 + 4 + 6) / 3}
    empty = position_metrics(position_sums({"clip_ratio": torch.ones(1, 2)}, torch.tensor([[1, 0]]), num_bins=4))
    # One valid token: its centre (1/2 of the response) is in bin 2 of 4; the other bins are empty (NaN).
    assert empty["soup/position/clip_ratio/bin_2"] == 1.0
    assert all(math.isnan(empty[f"soup/position/clip_ratio/bin_{i}"]) for i in (0, 1, 3))


def test_importance_sampling_metrics_over_the_continuation_only():
    prefix_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    completion_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    token = torch.tensor([[9.0, 9.0, 0.5, 7.0], [9.0, 9.0, 9.0, 9.0], [2.0, 1.5, 8.0, 8.0]])
    assert continuation_ratio_summary(token, completion_mask, prefix_mask).tolist() == pytest.approx([0.5, 4 / 3, 2.0])
    sequence = torch.tensor([[0.5], [9.0], [2.0]])  # row 1 has no continuation token
    assert continuation_ratio_summary(sequence, completion_mask, prefix_mask).tolist() == [0.5, 1.25, 2.0]
    nothing = continuation_ratio_summary(token[1:2], completion_mask[1:2], prefix_mask[1:2])
    assert nothing.isnan().all()
    gathered = torch.stack([torch.tensor([0.5, 1.0, 2.0]), nothing, torch.tensor([0.25, 3.0, 1.5])])
    assert importance_sampling_metrics(gathered) == {
        "sampling/importance_sampling_ratio/min": 0.25,
        "sampling/importance_sampling_ratio/mean": 2.0,
        "sampling/importance_sampling_ratio/max": 2.0,
    }


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_restrict_vllm_correction_in_place(level):
    prefix_mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    behavior = torch.tensor([[-0.5, -0.25, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    nan = float("nan")
    sampling = torch.tensor([[nan, nan, -1.0, -2.0], [-3.0, -4.0, -5.0, nan]])
    ratio = (
        torch.tensor([[3.0, 3.0, 0.5, 1.5], [2.0, 1.0, 1.0, 1.0]])
        if level == "token"
        else torch.tensor([[0.5], [2.0]])
    )
    batch = {
        "prefix_mask": prefix_mask,
        "behavior_per_token_logps": behavior,
        "sampling_per_token_logps": sampling,
        "importance_sampling_ratio": ratio,
        "completion_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
    }
    summary = restrict_vllm_correction(batch)
    expected_sampling = torch.tensor([[-0.5, -0.25, -1.0, -2.0], [-3.0, -4.0, -5.0, nan]])
    torch.testing.assert_close(batch["sampling_per_token_logps"], expected_sampling, equal_nan=True)
    restricted = batch["importance_sampling_ratio"]
    assert restricted.shape == (2, 4) and restricted[prefix_mask.bool()].eq(1).all()
    assert torch.equal(restricted[~prefix_mask.bool()], ratio.expand(2, 4)[~prefix_mask.bool()])
    wanted = [0.5, 1.2, 2.0] if level == "token" else [0.5, 1.25, 2.0]  # token: 0.5, 1.5, 2, 1, 1 (5 tokens)
    assert summary.tolist() == pytest.approx(wanted)
    batch.pop("importance_sampling_ratio")
    assert restrict_vllm_correction(batch) is None
