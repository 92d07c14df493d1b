"""Refresh policies (issue 13, item 1): the fixed interval of the paper, the adaptive policy and registered ones.

Pure tests of the schedule first (decisions against the rule written out), then training runs: the batch where the
policy says so refreshes, the fixed policy is the paper's schedule, and a mid-window resume takes the same decisions.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch
from testing_utils import soup_args

from trl_soup import SOUPConfig, register_refresh_policy
from trl_soup.core import behavior_kl_estimate
from trl_soup.refresh import _REGISTRY, REFRESH_REASONS, RefreshSchedule, RefreshStats
from trl_soup.trainer import SOUP_STATE_FILE


def _args(policy="fixed", T=8, minimum=2, staleness=0.02):
    return types.SimpleNamespace(
        behavior_refresh_policy=policy,
        behavior_refresh_interval=T,
        behavior_refresh_min_interval=minimum,
        behavior_max_staleness=staleness,
    )


def _run_schedule(args, staleness_of_batch, batches=40):
    """Decisions over `batches` generation batches; batch i's loss reports staleness `staleness_of_batch(i)` on 10
    prefix tokens when it is a relay batch (on-policy batches have no prefix)."""
    schedule, refreshed = RefreshSchedule(), []
    for index in range(batches):
        reason = schedule.decide(index, args)
        if reason != "none":
            schedule.refreshed(index)
            refreshed.append((index, reason))
        if index > schedule.last_refresh:  # a relay batch: its loss forwards report the prefix sums
            value = staleness_of_batch(index)
            schedule.add(5.0, 5.0 * value, 0.0, 0.0)  # two loss forwards of 5 prefix tokens each
            schedule.add(5.0, 5.0 * value, 0.0, 0.0)
    return refreshed


@pytest.mark.parametrize("T", [1, 2, 3, 8])
def test_fixed_policy_is_the_papers_schedule(T):
    refreshed = _run_schedule(_args("fixed", T=T), lambda i: 10.0)  # staleness does not matter
    assert [i for i, _ in refreshed] == [i for i in range(40) if i % T == 0]
    assert refreshed[0] == (0, "start") and all(reason == "interval" for _, reason in refreshed[1:])


def test_adaptive_refreshes_when_stale_within_the_bounds():
    # Staleness grows by 0.01 per batch since the last refresh: it exceeds 0.025 from the 3rd relay batch on.
    schedule_state = {"last": 0}

    def growing(index):
        return 0.01 * (index - schedule_state["last"])

    args = _args("adaptive", T=8, minimum=2, staleness=0.025)
    schedule, decisions = RefreshSchedule(), []
    for index in range(20):
        reason = schedule.decide(index, args)
        if reason != "none":
            schedule.refreshed(index)
            schedule_state["last"] = index
        decisions.append(reason)
        if index > schedule.last_refresh:
            schedule.add(4.0, 4.0 * growing(index), 0.0, 0.0)
    # Batch r refreshes; relay batches r+1 (0.01), r+2 (0.02), r+3 (0.03 > 0.025): batch r+4 refreshes.
    assert [i for i, r in enumerate(decisions) if r != "none"] == [0, 4, 8, 12, 16]
    assert decisions[4] == decisions[8] == "policy"
    # Never sooner than the minimum interval, even when every relay batch is stale.
    always = _run_schedule(_args("adaptive", T=8, minimum=3, staleness=0.0), lambda i: 1.0, batches=13)
    assert [i for i, _ in always] == [0, 3, 6, 9, 12]
    # Never later than T, even when nothing is ever stale.
    never = _run_schedule(_args("adaptive", T=5, minimum=2, staleness=1e9), lambda i: 1.0, batches=16)
    assert never == [(0, "start"), (5, "interval"), (10, "interval"), (15, "interval")]


def test_stats_are_the_last_relay_batch_sums():
    schedule = RefreshSchedule()
    schedule.decide(0, _args())
    schedule.refreshed(0)
    assert schedule.stats(1) == RefreshStats(1)  # no relay batch yet
    schedule.add(3.0, 0.3, 0.6, 1.0)
    schedule.add(1.0, 0.1, 0.2, 0.0)
    schedule.decide(2, _args())  # commits batch 1's sums
    assert schedule.stats(2) == RefreshStats(2, pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.25))
    schedule.decide(3, _args())  # batch 2 reported no prefix token: the stats stay batch 1's
    assert schedule.stats(3).staleness == pytest.approx(0.1)


def test_registered_policy_and_state_round_trip():
    @register_refresh_policy("clip_alarm")
    def clip_alarm(stats, args):
        return stats.prefix_clip_ratio is not None and stats.prefix_clip_ratio > 0.5

    try:
        args = _args("clip_alarm", T=6, minimum=1)
        schedule = RefreshSchedule()
        reasons = []
        for index, clipped in enumerate([0, 0.1, 0.9, 0, 0, 0, 0, 0, 0]):
            reason = schedule.decide(index, args)
            reasons.append(reason)
            if reason != "none":
                schedule.refreshed(index)
            if index > schedule.last_refresh:
                schedule.add(10.0, 0.0, 0.0, 10.0 * clipped)
            if index == 4:  # a checkpoint: the copy continues with the same decisions
                restored = RefreshSchedule.from_state_dict(schedule.state_dict())
                assert restored == schedule
        assert reasons == ["start", "none", "none", "policy", "none", "none", "none", "none", "none"]
        assert RefreshSchedule.from_state_dict(schedule.state_dict()).decide(9, args) == "interval"  # 9 - 3 = T
        with pytest.raises(ValueError, match="already registered"):
            register_refresh_policy("clip_alarm", clip_alarm)
    finally:
        _REGISTRY.entries.pop("clip_alarm", None)


def test_a_policy_that_returns_no_bool_is_named():
    """A string was taken as True and refreshed every batch (issue 24, item 6)."""
    register_refresh_policy("says_yes", lambda stats, args: "yes")
    try:
        schedule, args = RefreshSchedule(), _args("says_yes", T=6, minimum=1)
        assert schedule.decide(0, args) == "start"
        schedule.refreshed(0)
        with pytest.raises(TypeError, match=r"refresh policy 'says_yes' returned 'yes' \(str\): .*True .* or False"):
            schedule.decide(1, args)
    finally:
        _REGISTRY.entries.pop("says_yes", None)


def test_config_refuses_unknown_policy_and_bad_values(tmp_path):
    with pytest.raises(
        ValueError, match=r"behavior_refresh_policy='sometimes'.*Allowed values: \['adaptive', 'fixed'\]"
    ):
        SOUPConfig(output_dir=str(tmp_path), use_cpu=True, behavior_refresh_policy="sometimes")
    with pytest.raises(ValueError, match="behavior_max_staleness=-1.*>= 0"):
        SOUPConfig(
            output_dir=str(tmp_path), use_cpu=True, behavior_refresh_policy="adaptive", behavior_max_staleness=-1
        )
    with pytest.raises(ValueError, match="behavior_refresh_min_interval=0"):
        SOUPConfig(output_dir=str(tmp_path), use_cpu=True, behavior_refresh_min_interval=0)
    with pytest.warns(UserWarning, match="behavior_max_staleness=0.5 is ignored: behavior_refresh_policy='fixed'"):
        SOUPConfig(output_dir=str(tmp_path), use_cpu=True, behavior_max_staleness=0.5)


def test_kl_estimate_is_unbiased_and_non_negative():
    torch.manual_seed(0)
    behavior = torch.log_softmax(torch.randn(50), -1)
    theta = torch.log_softmax(torch.randn(50), -1)
    tokens = torch.multinomial(behavior.exp(), 200_000, replacement=True)
    estimate = behavior_kl_estimate(theta[tokens] - behavior[tokens])
    exact = (behavior.exp() * (behavior - theta)).sum()
    assert bool((estimate >= 0).all())
    assert float(estimate.mean()) == pytest.approx(float(exact), rel=0.03)


def _reasons_in(log_history):
    """The refresh reason of each logged step ("none" when no soup/refresh/<reason> indicator is 1)."""
    reasons = []
    for h in log_history:
        if "soup/refresh/start" in h:
            fired = [name for name in REFRESH_REASONS if h[f"soup/refresh/{name}"] == 1.0]
            assert len(fired) <= 1 and all(h[f"soup/refresh/{n}"] in (0.0, 1.0) for n in REFRESH_REASONS), h
            reasons.append(fired[0] if fired else "none")
    return reasons


def _reasons(trainer):
    return _reasons_in(trainer.state.log_history)


def test_training_refreshes_where_the_policy_says(tmp_path, make_trainer):
    # max_staleness 0: every relay batch is stale (the learner moves at lr 5e-3), so the copy is refreshed as soon as
    # the minimum interval allows: batches 0, 2, 4, ...; the fixed policy refreshes at 0 and 8 only.
    stale = make_trainer(
        soup_args(
            tmp_path / "stale",
            max_steps=10,
            behavior_refresh_interval=8,
            behavior_refresh_policy="adaptive",
            behavior_max_staleness=0.0,
            behavior_refresh_min_interval=2,
        )
    )
    stale.train()
    assert _reasons(stale) == ["start"] + ["none", "policy"] * 4 + ["none"]
    relay = [h["soup/relay_batch"] for h in stale.state.log_history if "soup/relay_batch" in h]
    assert relay == [0.0, 1.0] * 5
    staleness = [h["soup/staleness"] for h in stale.state.log_history if "soup/staleness" in h]
    assert len(staleness) == 4 and all(s > 0 for s in staleness)  # seen by the decisions after relay batches 1-7
    fixed = make_trainer(soup_args(tmp_path / "fixed", max_steps=10, behavior_refresh_interval=8))
    fixed.train()
    assert _reasons(fixed) == ["start"] + ["none"] * 7 + ["interval", "none"]


def test_refresh_metrics_average_to_fractions_of_batches(tmp_path, make_trainer):
    """Issue 24 item 8: one 0/1 metric per reason, so that the average TRL logs over `logging_steps` (and over ranks)
    is the fraction of batches refreshed for that reason. T = 2, two steps per log: every logged pair holds one
    refresh (batches 0, 2, 4) and one batch without."""
    trainer = make_trainer(soup_args(tmp_path, max_steps=6, behavior_refresh_interval=2, logging_steps=2))
    trainer.train()
    logged = [
        tuple(h[f"soup/refresh/{name}"] for name in REFRESH_REASONS)
        for h in trainer.state.log_history
        if "soup/refresh/start" in h
    ]
    assert logged == [(0.5, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.5, 0.0)]


@pytest.mark.slow
def test_adaptive_resume_mid_window_takes_the_same_decisions(tmp_path, make_trainer):
    settings = dict(
        max_steps=8,
        behavior_refresh_interval=6,
        behavior_refresh_policy="adaptive",
        behavior_refresh_min_interval=2,
        save_strategy="steps",
        save_steps=3,
    )
    # A threshold between the staleness values of this run, so that some windows end early and some do not.
    probe = make_trainer(soup_args(tmp_path / "probe", **{**settings, "behavior_max_staleness": 1e9}))
    probe.train()
    values = sorted(h["soup/staleness"] for h in probe.state.log_history if "soup/staleness" in h)
    threshold = values[len(values) // 2]
    full = make_trainer(soup_args(tmp_path / "full", **settings, behavior_max_staleness=threshold))
    full.train()
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-3")
    state = torch.load(os.path.join(checkpoint, SOUP_STATE_FILE), weights_only=True)
    assert state["refresh_schedule"]["last_refresh"] is not None
    resumed = make_trainer(soup_args(tmp_path / "resumed", **settings, behavior_max_staleness=threshold))
    resumed.train(resume_from_checkpoint=checkpoint)
    by_step = lambda t, key: {h["step"]: h[key] for h in t.state.log_history if key in h}  # noqa: E731
    for key in ("soup/refresh/policy", "soup/refresh/interval", "loss", "reward", "soup/behavior_age"):
        expected, got = by_step(full, key), by_step(resumed, key)
        assert set(range(4, 9)) <= set(got), key
        for step in range(4, 9):
            assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), (key, step)
    assert 1.0 in by_step(full, "soup/refresh/policy").values()  # a window did end early


@pytest.mark.slow
def test_resume_without_the_schedule_state_would_diverge(tmp_path, make_trainer, monkeypatch):
    """Negative control of the resume test: rebuilding the schedule from the batch index alone (what a checkpoint
    of 0.1 allows) takes other decisions once a policy ended a window early."""
    from trl_soup.state import SOUPState

    settings = dict(
        max_steps=8,
        behavior_refresh_interval=6,
        behavior_refresh_policy="adaptive",
        behavior_refresh_min_interval=3,
        behavior_max_staleness=0.0,
        save_strategy="steps",
        save_steps=4,
    )
    full = make_trainer(soup_args(tmp_path / "full", **settings))
    full.train()
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-4")
    monkeypatch.setattr(SOUPState, "schedule", lambda self: RefreshSchedule(last_refresh=0))
    broken = make_trainer(soup_args(tmp_path / "broken", **settings))
    broken.train(resume_from_checkpoint=checkpoint)
    # Full run: refreshes at batches 0, 3, 6. Rebuilt (last refresh 0, no statistics): batch 5 refreshes instead.
    assert _reasons(full)[4:] == ["none", "none", "policy", "none"]
    assert _reasons(broken)[-4:] != _reasons(full)[4:]


@pytest.mark.slow
def test_two_processes_take_the_same_decisions(tmp_path):
    """DDP over 2 CPU processes: the forced staleness refreshes at batches 0, 2, 4 on both ranks, from the same
    (all-reduced) staleness, and the snapshots stay identical."""
    from launch import check_ranks, launch_for_result

    script = Path(__file__).resolve().parent / "scripts" / "ddp_adaptive_refresh.py"
    result = launch_for_result("cpu_ddp.yaml", script, tmp_path, timeout=600, what="DDP adaptive refresh run")
    ranks = check_ranks(result, 2, "MULTI_CPU")
    for r in ranks:
        assert r["ages"] == [0, 1, 0, 1, 0, 1], r
        assert r["last_refresh"] == 4 and r["behavior_equal_rank0"], r
        assert r["staleness"][0] is None and all(s is not None and s > 0 for s in r["staleness"][2::2]), r
    assert ranks[0]["staleness"] == ranks[1]["staleness"]  # bit-identical: the same reduced sums on both ranks
    assert _reasons_in(result["log_history"]) == ["start", "none", "policy", "none", "policy", "none"]
