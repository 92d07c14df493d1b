"""A pool of K historical snapshots (issue 13, part 2): which slot a refresh overwrites, which member writes each row,
and, in training, that each row's prefix and denominators are those of the member it names, that "newest" is the
paper's single snapshot, and that a mid-window resume with a pool reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import types
import warnings

import pytest
import torch
from testing_utils import RecordingTrainer, batch_reference_logps, soup_args

from trl_soup import SOUPConfig, available_pool_samplings, register_pool_sampling
from trl_soup.behavior.base import BehaviorSamples
from trl_soup.behavior.pool import POOL_STATE_FILE, merge_member_samples
from trl_soup.checks import check_trainer_arguments
from trl_soup.pool import _REGISTRY, choose_pool_members, pool_age_order, pool_victim
from trl_soup.toy import build_tiny_model
from trl_soup.trainer import SNAPSHOT_DIR, SOUP_STATE_FILE

# ---------------------------------------------------------------------------------------------- pure rules


def test_victim_and_age_order():
    assert pool_victim([None, None, None]) == 0
    assert pool_victim([0, None, None]) == 1
    assert pool_victim([4, None, 2]) == 1  # an empty slot before any overwrite
    assert pool_victim([4, 6, 2]) == 2  # full: the oldest snapshot
    assert pool_victim([8, 6, 10]) == 1
    assert pool_age_order([4, None, 2]) == [0, 2]
    assert pool_age_order([8, 6, 10]) == [2, 0, 1]
    # Rotation over refreshes at 0, 2, 4, ...: slots 0, 1, 2, 0, 1, ... and always the K newest snapshots.
    births = [None, None, None]
    for index in range(0, 20, 2):
        births[pool_victim(births)] = index
        newest = sorted((b for b in births if b is not None), reverse=True)
        assert newest == [index - 2 * k for k in range(min(3, index // 2 + 1))]


def test_builtin_rules():
    assert set(available_pool_samplings()) >= {"newest", "uniform", "oldest"}
    generator = torch.Generator().manual_seed(0)
    births = [10, 14, 12]  # ages at batch 15: newest first [1, 3, 5]
    assert choose_pool_members("newest", 5, births, 15, generator) == [0] * 5
    assert choose_pool_members("oldest", 5, births, 15, generator) == [2] * 5
    ranks = choose_pool_members("uniform", 3000, births, 15, generator)
    counts = [ranks.count(k) / 3000 for k in range(3)]
    assert all(abs(c - 1 / 3) < 0.03 for c in counts), counts  # 3.5 sigma of a binomial share
    # With fewer filled slots, only those are chosen.
    assert set(choose_pool_members("uniform", 200, [3, None, None], 5, generator)) == {0}
    with pytest.raises(RuntimeError, match="no snapshot"):
        choose_pool_members("newest", 2, [None, None], 1, generator)


def test_registered_rule_sees_ages_and_is_checked():
    seen = {}

    def second(num_rows, ages, generator):
        seen["ages"] = ages
        return [min(1, len(ages) - 1)] * num_rows

    register_pool_sampling("test-second", second)
    try:
        assert choose_pool_members("test-second", 3, [6, 2, 4], 7, torch.Generator()) == [1, 1, 1]
        assert seen["ages"] == [1, 3, 5]  # newest first
        with pytest.raises(ValueError, match="already registered"):
            register_pool_sampling("test-second", second)
        register_pool_sampling("test-bad", lambda n, ages, g: [len(ages)] * n)
        with pytest.raises(ValueError, match=r"behavior_pool_sampling='test-bad' returned .* integers in \[0, 3\)"):
            choose_pool_members("test-bad", 2, [6, 2, 4], 7, torch.Generator())
    finally:
        _REGISTRY.entries.pop("test-second", None)
        _REGISTRY.entries.pop("test-bad", None)


def _samples(ids, logps):
    ids = torch.tensor(ids)
    mask = (ids != 0).long()
    return BehaviorSamples(ids, mask, torch.tensor(logps) * mask, torch.ones(ids.shape) * mask, mask[:, -1].bool())


def test_merge_member_samples_places_rows():
    a = _samples([[5, 6, 7], [8, 0, 0]], [[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]])
    b = _samples([[9]], [[-5.0]])
    merged = merge_member_samples([([0, 2], a), ([1], b)], 3, pad_token_id=0)
    assert merged.completion_ids.tolist() == [[5, 6, 7], [9, 0, 0], [8, 0, 0]]
    assert merged.mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    assert merged.per_token_logps.tolist() == [[-1.0, -2.0, -3.0], [-5.0, 0.0, 0.0], [-4.0, 0.0, 0.0]]
    assert merged.ended_with_eos.tolist() == [True, True, False]
    assert merged.lengths.tolist() == [3, 1, 1]


# ---------------------------------------------------------------------------------------------- configuration


def test_config_validates_pool_fields(tmp_path):
    with pytest.raises(ValueError, match=r"behavior_pool_size=0 is invalid: it must be an integer in \[1, 32\]"):
        soup_args(tmp_path, behavior_pool_size=0)
    with pytest.raises(ValueError, match=r"behavior_pool_sampling='nope' is not a registered rule.*'uniform'"):
        soup_args(tmp_path, behavior_pool_size=2, behavior_pool_sampling="nope")
    with pytest.raises(ValueError, match="behavior_pool_size=2 with behavior_backend='vllm_server' needs"):
        soup_args(tmp_path, behavior_pool_size=2, behavior_backend="vllm_server", behavior_refresh_method="disk")
    with pytest.warns(UserWarning, match="behavior_pool_sampling='uniform' is ignored"):
        soup_args(tmp_path, behavior_pool_sampling="uniform")
    # a pool with a rule: no warning about the pool (upstream deprecation warnings, e.g. transformers 5.24's
    # `gradient_checkpointing` FutureWarning, are not ours to assert on)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = soup_args(tmp_path, behavior_pool_size=3, behavior_pool_sampling="oldest")
    assert [str(w.message) for w in caught if "behavior_pool" in str(w.message)] == []
    assert isinstance(args, SOUPConfig) and args.behavior_pool_size == 3


def test_pool_refused_under_zero3_before_the_model_loads(tmp_path):
    args = soup_args(tmp_path, behavior_pool_size=2)
    zero3 = types.SimpleNamespace(zero_stage=3)
    fake = types.SimpleNamespace(**{**vars(args), "deepspeed_plugin": zero3})
    with pytest.raises(ValueError, match="behavior_pool_size=2 is not supported under DeepSpeed ZeRO-3"):
        check_trainer_arguments(fake, {"model": "not-loaded"})


# ---------------------------------------------------------------------------------------------- training


class PoolRecordingTrainer(RecordingTrainer):
    """Records the learner's weights at each refresh, and at each relay batch the pool's order (slot by age rank), the
    behavior budget and a re-sample of each member's rows."""

    def record_before(self, inputs):
        learner = self.accelerator.unwrap_model(self.model)
        return {"learner": {k: v.detach().clone() for k, v in learner.state_dict().items()}}

    def record_after(self, record):
        relay = record["relay"]
        extra = {"births": list(self.behavior.births), "order": self.behavior.age_order()}
        if relay is not None:
            batch = record["batch"]
            prompts = [
                ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)
            ]
            ages = relay.member_ages.tolist()
            resampled = {}
            for rank in sorted(set(ages)):
                rows = [i for i, a in enumerate(ages) if a == rank]
                member = self.behavior.members[extra["order"][rank]]
                samples = member.sample(
                    [prompts[i] for i in rows],
                    self.max_completion_length,
                    generation_batch_index=record["index"],
                    stream=rank,
                )
                for j, i in enumerate(rows):
                    resampled[i] = samples.completion_ids[j][samples.mask[j].bool()].tolist()
            extra["resampled"] = resampled
        return extra


def _pool_args(tmp_path, **overrides):
    settings = dict(behavior_refresh_interval=2, max_steps=10, behavior_pool_size=3, behavior_pool_sampling="uniform")
    return soup_args(tmp_path, **{**settings, **overrides})


@pytest.mark.slow
def test_uniform_pool_rows_are_written_by_the_member_they_name(tmp_path, tokenizer, make_trainer):
    trainer = make_trainer(_pool_args(tmp_path), trainer_class=PoolRecordingTrainer)
    trainer.train()
    records = trainer.records
    refreshes = {r["index"]: r["learner"] for r in records if r["index"] % 2 == 0}  # T = 2: even batches refresh
    seen_ranks = set()
    for r in records:
        if r["relay"] is None:
            continue
        relay, batch, index = r["relay"], r["batch"], r["index"]
        # The pool holds the snapshots of the last three refreshes, newest first.
        expected_births = [b for b in sorted(refreshes, reverse=True) if b < index][:3]
        assert [r["births"][slot] for slot in r["order"]] == expected_births
        ages = relay.member_ages.tolist()
        assert torch.equal(batch["behavior_member_age"].cpu(), relay.member_ages)
        seen_ranks |= set(ages)
        for i in range(len(ages)):
            k = int(relay.prefix_lengths[i])
            row = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
            # The prefix is the first k tokens of a response the named member samples for this row.
            assert row[:k] == relay.behavior_completion_ids[i][:k] == r["resampled"][i][:k]
        # Denominators: an independent forward of the weights the learner had at each member's refresh.
        for rank in set(ages):
            snapshot = build_tiny_model(tokenizer, seed=0)
            snapshot.load_state_dict(refreshes[expected_births[rank]])
            ref, _ = batch_reference_logps(snapshot.eval(), batch, trainer.args.temperature)
            rows = relay.member_ages == rank
            prefix = batch["prefix_mask"].bool() & rows.unsqueeze(1)
            assert prefix.any()
            diff = (batch["behavior_per_token_logps"][prefix] - ref[prefix]).abs().max().item()
            assert diff < 1e-5, (index, rank, diff)
            if rank > 0:  # an older member is not the newest: the denominators tell them apart
                newest = build_tiny_model(tokenizer, seed=0)
                newest.load_state_dict(refreshes[expected_births[0]])
                other, _ = batch_reference_logps(newest.eval(), batch, trainer.args.temperature)
                assert (other[prefix] - ref[prefix]).abs().max().item() > 1e-3
    assert seen_ranks == {0, 1, 2}
    logged = [h for h in trainer.state.log_history if "soup/pool/age_0/prefix_share" in h]
    assert logged
    for h in logged:
        shares = [h.get(f"soup/pool/age_{k}/prefix_share", 0.0) for k in range(3)]
        assert sum(shares) == pytest.approx(1.0)


@pytest.mark.slow
def test_newest_pool_is_the_single_snapshot(tmp_path, make_trainer):
    single = make_trainer(_pool_args(tmp_path / "one", behavior_pool_size=1, behavior_pool_sampling="newest"))
    single.train()
    pooled = make_trainer(_pool_args(tmp_path / "three", behavior_pool_sampling="newest"))
    pooled.train()
    for a, b in zip(single.state.log_history, pooled.state.log_history, strict=True):
        for key in ("loss", "reward", "soup/log_ratio/prefix_abs_mean"):
            if key in a:
                assert a[key] == b[key], key
    for (name, p), (_, q) in zip(single.model.named_parameters(), pooled.model.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def _by_step(trainer, key):
    return {h["step"]: h[key] for h in trainer.state.log_history if key in h}


@pytest.mark.slow
def test_pool_resume_mid_window_matches_uninterrupted(tmp_path, make_trainer, monkeypatch):
    settings = dict(behavior_refresh_interval=3, max_steps=12, save_strategy="steps", save_steps=4)
    full = make_trainer(_pool_args(tmp_path / "full", **settings))
    full.train()
    # Batch 8 is mid-window (refreshes at 0, 3, 6, 9): every member is saved. Batch 12 ends a window: the slot the
    # next refresh overwrites is left out.
    for step, saved_count in ((8, 3), (12, 2)):
        checkpoint = os.path.join(full.args.output_dir, f"checkpoint-{step}")
        state = torch.load(os.path.join(checkpoint, SOUP_STATE_FILE), weights_only=True)
        assert state["behavior_snapshot"]
        with open(os.path.join(checkpoint, SNAPSHOT_DIR, POOL_STATE_FILE)) as f:
            pool = json.load(f)
        assert len(pool["saved"]) == saved_count
        assert sorted(os.listdir(os.path.join(checkpoint, SNAPSHOT_DIR))) == sorted(
            [POOL_STATE_FILE] + [f"member-{slot}" for slot in pool["saved"]]
        )
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-8")
    resumed = make_trainer(_pool_args(tmp_path / "resumed", **settings))
    resumed.train(resume_from_checkpoint=checkpoint)
    for key in ("loss", "reward", "soup/pool/age_2/prefix_share", "soup/log_ratio/prefix_abs_mean"):
        expected, got = _by_step(full, key), _by_step(resumed, key)
        steps = [s for s in expected if s > 8]
        assert steps, key
        for step in steps:
            assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), (key, step)
    assert resumed.behavior.births == full.behavior.births
    # Negative control: without the older members' weights the resumed run diverges.
    from trl_soup.behavior.local import LocalBehaviorBackend

    monkeypatch.setattr(LocalBehaviorBackend, "load_snapshot", lambda self, directory: None)
    broken = make_trainer(_pool_args(tmp_path / "broken", **settings))
    broken.train(resume_from_checkpoint=checkpoint)
    assert any(abs(_by_step(broken, "loss")[s] - _by_step(full, "loss")[s]) > 1e-6 for s in (9, 10, 11, 12))


@pytest.mark.slow
def test_peft_pool_members_are_adapters(tmp_path, tokenizer, make_trainer):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    trainer = make_trainer(
        _pool_args(tmp_path, learning_rate=5e-2, max_steps=8), trainer_class=PoolRecordingTrainer, peft_config=lora
    )
    learner = trainer.accelerator.unwrap_model(trainer.model)
    assert set(learner.peft_config) == {"default", "behavior", "behavior_1", "behavior_2"}
    trainer.train()
    refreshes = {r["index"]: r["learner"] for r in trainer.records if r["index"] % 2 == 0}
    checked = set()
    for r in trainer.records:
        relay, batch = r["relay"], r["batch"]
        if relay is None:
            continue
        expected_births = [b for b in sorted(refreshes, reverse=True) if b < r["index"]][:3]
        for rank in set(relay.member_ages.tolist()):
            snapshot = peft.get_peft_model(build_tiny_model(tokenizer, seed=0), lora)
            state = {k: v for k, v in refreshes[expected_births[rank]].items() if ".behavior" not in k}
            snapshot.load_state_dict(state, strict=False)
            ref, _ = batch_reference_logps(snapshot.eval(), batch, trainer.args.temperature)
            prefix = batch["prefix_mask"].bool() & (relay.member_ages == rank).unsqueeze(1)
            assert (batch["behavior_per_token_logps"][prefix] - ref[prefix]).abs().max().item() < 1e-5
            checked.add(rank)
    assert checked == {0, 1, 2}
    trainer.save_model(str(tmp_path / "saved"))
    assert not any(name.startswith("behavior") for name in os.listdir(tmp_path / "saved"))


def test_resume_with_another_pool_size_is_refused(tmp_path, make_trainer):
    """Resuming a K=2 checkpoint with K=1 failed with FileNotFoundError (.../behavior_snapshot.pt; issue 24, item 4):
    the checkpoint holds the pool's members. Now K is part of the SOUP state and a different K is named."""
    settings = dict(behavior_refresh_interval=3, max_steps=4, save_strategy="steps", save_steps=4)
    pool = make_trainer(_pool_args(tmp_path / "pool", behavior_pool_size=2, **settings))
    pool.train()
    checkpoint = os.path.join(pool.args.output_dir, "checkpoint-4")
    resumed = make_trainer(soup_args(tmp_path / "single", **settings))
    with pytest.raises(ValueError, match=r"trained with behavior_pool_size=2, this run uses 1; resume with the same"):
        resumed.train(resume_from_checkpoint=checkpoint)
