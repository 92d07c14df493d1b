"""End-to-end relay semantics on a tiny model (full fine-tuning): what reaches the loss is what SOUP says."""

from __future__ import annotations

import math

import pytest
import torch
from testing_utils import RecordingTrainer, batch_reference_logps, reference_logps, soup_args

from trl_soup import register_prefix_strategy
from trl_soup.core import truncate_by_ratio
from trl_soup.truncation import _PREFIX_STRATEGIES


def _clone_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class SnapshotRecordingTrainer(RecordingTrainer):
    """Records, besides the batch, the learner weights in force while it is generated and the snapshot after it."""

    def record_before(self, inputs):
        return {"learner": _clone_state(self.accelerator.unwrap_model(self.model))}

    def record_after(self, record):
        behavior = self.behavior
        return {"snapshot": None if behavior is None or behavior.snapshot is None else _clone_state(behavior.snapshot)}


def _model_with(make_model, state):
    model = make_model(seed=123)  # different init, then overwritten: proves the weights come from `state`
    model.load_state_dict(state)
    model.eval()
    return model


@pytest.fixture
def relay_run(tmp_path, make_trainer):
    # The separate pi_old forward (not the default), so that the batch holds pi_old to check against a forward.
    args = soup_args(
        tmp_path, behavior_refresh_interval=3, max_steps=7, prefix_ratio=0.5, old_logps_from_loss_forward=False
    )
    trainer = make_trainer(args, trainer_class=SnapshotRecordingTrainer)
    trainer.train()
    return trainer


def test_refresh_schedule_and_frozen_snapshot(relay_run):
    records = relay_run.records
    assert [r["age"] for r in records] == [0, 1, 2, 0, 1, 2, 0]
    for r in records:
        relay = r["age"] > 0
        assert (r["relay"] is not None) == relay
        if not relay:
            # The batch right after a refresh is on-policy: no prefix, and the snapshot equals the learner.
            assert int(r["batch"]["prefix_mask"].sum()) == 0
            for k, v in r["learner"].items():
                assert torch.equal(r["snapshot"][k], v), k
        else:
            assert int(r["batch"]["prefix_mask"].sum()) > 0
    # Between refreshes the snapshot is frozen while the learner moves on.
    for a, b in [(0, 1), (1, 2), (3, 4), (4, 5)]:
        for k in records[a]["snapshot"]:
            assert torch.equal(records[a]["snapshot"][k], records[b]["snapshot"][k]), k
        assert any(not torch.equal(records[a]["learner"][k], records[b]["learner"][k]) for k in records[a]["learner"])
    # At the relay batch, the behavior copy is older than the learner.
    assert any(not torch.equal(records[2]["snapshot"][k], records[2]["learner"][k]) for k in records[2]["learner"])
    logged = [h for h in relay_run.state.log_history if "soup/relay_batch" in h]
    assert [h["soup/relay_batch"] for h in logged] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert [h["soup/behavior_age"] for h in logged] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]


def test_prefix_is_head_of_behavior_sample(relay_run, tokenizer):
    max_len = relay_run.args.max_completion_length
    for r in relay_run.records:
        if r["relay"] is None:
            continue
        batch, relay = r["batch"], r["relay"]
        behavior_lengths = torch.tensor([len(ids) for ids in relay.behavior_completion_ids])
        expected = truncate_by_ratio(behavior_lengths, 0.5)
        assert torch.equal(relay.prefix_lengths, expected)
        assert torch.equal(batch["prefix_mask"].sum(1).cpu(), expected)
        for i, behavior_ids in enumerate(relay.behavior_completion_ids):
            k = int(expected[i])
            row = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
            assert row[:k] == behavior_ids[:k]
            assert len(row) <= max_len
            # The continuation respects the per-row budget and stops at the first EOS.
            continuation = row[k:]
            assert len(continuation) <= max_len - k
            eos = tokenizer.eos_token_id
            assert eos not in continuation[:-1]
            if len(row) < max_len and len(continuation) > 0:
                assert continuation[-1] == eos


def test_behavior_and_old_logps_are_exact(relay_run, make_model):
    temperature = relay_run.args.temperature
    checked = 0
    for r in relay_run.records:
        if r["relay"] is None:
            continue
        b = r["batch"]
        snapshot = _model_with(make_model, r["snapshot"])
        learner = _model_with(make_model, r["learner"])
        ref_behavior, _ = batch_reference_logps(snapshot, b, temperature)
        ref_old, _ = batch_reference_logps(learner, b, temperature)
        prefix = b["prefix_mask"].bool()
        torch.testing.assert_close(b["behavior_per_token_logps"][prefix], ref_behavior[prefix], atol=1e-5, rtol=1e-5)
        assert torch.all(b["behavior_per_token_logps"][~prefix] == 0)
        valid = b["completion_mask"].bool()
        torch.testing.assert_close(b["old_per_token_logps"][valid], ref_old[valid], atol=1e-5, rtol=1e-5)
        # The two policies really differ here, so the test can tell them apart.
        assert (ref_behavior[prefix] - ref_old[prefix]).abs().max() > 1e-4
        checked += 1
    assert checked == 4


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_ratio_limits(tmp_path, ratio, make_trainer):
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=2, prefix_ratio=ratio, max_completion_length=6)
    trainer = make_trainer(args, trainer_class=RecordingTrainer)
    trainer.train()
    relay_record = trainer.records[1]
    assert relay_record["relay"] is not None
    batch = relay_record["batch"]
    if ratio == 0.0:
        # Empty prefix: every sample is on-policy.
        assert int(batch["prefix_mask"].sum()) == 0
        assert not relay_record["relay"].no_continuation.any()
    else:
        # The whole behavior response is the trajectory: no continuation is generated.
        assert relay_record["relay"].no_continuation.all()
        for i, behavior_ids in enumerate(relay_record["relay"].behavior_completion_ids):
            row = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
            assert row == behavior_ids
        assert torch.equal(batch["prefix_mask"], batch["completion_mask"].long())


def test_entropy_truncation_cuts_before_a_top_k_behavior_token(tmp_path, tokenizer, make_model, make_trainer):
    args = soup_args(
        tmp_path, behavior_refresh_interval=2, max_steps=2, prefix_strategy="entropy", prefix_entropy_top_k=2
    )
    trainer = make_trainer(args, trainer_class=SnapshotRecordingTrainer)
    trainer.train()
    record = trainer.records[1]
    batch, relay = record["batch"], record["relay"]
    snapshot = _model_with(make_model, record["snapshot"])
    ids = [torch.tensor(x) for x in relay.behavior_completion_ids]
    width = max(len(x) for x in ids)
    padded = torch.stack([torch.nn.functional.pad(x, (0, width - len(x)), value=tokenizer.pad_token_id) for x in ids])
    mask = torch.stack([torch.nn.functional.pad(torch.ones_like(x), (0, width - len(x))) for x in ids])
    _, entropy = reference_logps(snapshot, batch["prompt_ids"], batch["prompt_mask"], padded, mask, args.temperature)
    for i, x in enumerate(ids):
        top = set(torch.topk(entropy[i, : len(x)], k=min(2, len(x))).indices.tolist())
        assert int(relay.prefix_lengths[i]) in top


def test_registered_strategy_is_used(tmp_path, make_trainer):
    @register_prefix_strategy("first_two_tokens")
    def first_two(completion_ids, logps, entropies, mask, generator, args):
        return torch.clamp(mask.sum(1), max=2)

    try:
        args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=2, prefix_strategy="first_two_tokens")
        trainer = make_trainer(args, trainer_class=RecordingTrainer)
        trainer.train()
        lengths = [len(x) for x in trainer.records[1]["relay"].behavior_completion_ids]
        assert trainer.records[1]["batch"]["prefix_mask"].sum(1).tolist() == [min(2, n) for n in lengths]
    finally:
        _PREFIX_STRATEGIES.pop("first_two_tokens", None)


def test_refresh_interval_one_is_plain_dapo(tmp_path, make_trainer):
    args = soup_args(tmp_path, behavior_refresh_interval=1, max_steps=2)
    trainer = make_trainer(args, trainer_class=RecordingTrainer)
    trainer.train()
    assert trainer.behavior is None  # no second copy is built for T = 1
    assert all(r["relay"] is None and int(r["batch"]["prefix_mask"].sum()) == 0 for r in trainer.records)


def test_segment_metrics_logged(relay_run):
    relay_logs = [h for h in relay_run.state.log_history if h.get("soup/relay_batch") == 1.0]
    assert relay_logs
    for h in relay_logs:
        assert 0.0 < h["soup/prefix_fraction"] < 1.0
        for key in (
            "soup/clip_ratio/prefix",
            "soup/clip_ratio/continuation",
            "soup/entropy/prefix",
            "soup/entropy/continuation",
            "soup/log_ratio/prefix_abs_mean",
        ):
            assert h[key] is not None and math.isfinite(h[key]), key
        # The prefix is off-policy by construction; with lr 5e-3 the behavior copy has drifted from pi_theta.
        assert h["soup/log_ratio/prefix_abs_mean"] > 0


def test_tied_embeddings_snapshot(tmp_path, make_model, make_trainer):
    """A model whose output head is tied to its input embedding (small Qwen2.5 models): the copy stays tied, owns
    its own storage, and scores exactly like the snapshot it recorded."""
    args = soup_args(tmp_path, behavior_refresh_interval=3, max_steps=3)
    trainer = make_trainer(
        args, model=make_model(seed=0, tie_word_embeddings=True), trainer_class=SnapshotRecordingTrainer
    )
    trainer.train()
    snapshot = trainer.behavior.snapshot
    learner = trainer.accelerator.unwrap_model(trainer.model)
    assert snapshot.lm_head.weight.data_ptr() == snapshot.model.embed_tokens.weight.data_ptr()
    assert snapshot.lm_head.weight.data_ptr() != learner.lm_head.weight.data_ptr()
    record = trainer.records[2]
    b = record["batch"]
    independent = make_model(seed=9, tie_word_embeddings=True)
    independent.load_state_dict(record["snapshot"])
    independent.eval()
    ref, _ = batch_reference_logps(independent, b, args.temperature)
    prefix = b["prefix_mask"].bool()
    torch.testing.assert_close(b["behavior_per_token_logps"][prefix], ref[prefix], atol=1e-5, rtol=1e-5)
    # Two optimizer steps later, the learner's tied head has moved away from the snapshot's.
    assert not torch.equal(learner.lm_head.weight, snapshot.lm_head.weight)


@pytest.mark.parametrize("budget", [3, None])
def test_fixed_budget_prefix_decodes_only_what_it_keeps(tmp_path, tokenizer, make_model, budget, make_trainer):
    """Paper Appendix C: the behavior copy decodes at most the budget, all of it is kept, the policy continues."""
    args = soup_args(
        tmp_path,
        behavior_refresh_interval=2,
        max_steps=2,
        prefix_strategy="fixed_budget",
        prefix_budget=budget,
        prefix_ratio=0.4,
        max_completion_length=10,
    )
    expected_budget = 3 if budget is not None else 4  # round(0.4 * 10)
    trainer = make_trainer(args, trainer_class=SnapshotRecordingTrainer)
    trainer.train()
    record = trainer.records[1]
    relay, batch = record["relay"], record["batch"]
    lengths = [len(ids) for ids in relay.behavior_completion_ids]
    assert max(lengths) <= expected_budget and expected_budget in lengths
    assert relay.prefix_lengths.tolist() == lengths  # the whole decoded prefix is kept
    eos = tokenizer.eos_token_id
    for i, behavior_ids in enumerate(relay.behavior_completion_ids):
        row = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
        assert row[: len(behavior_ids)] == behavior_ids
        ended = bool(behavior_ids) and behavior_ids[-1] == eos
        assert bool(relay.no_continuation[i]) == ended  # an EOS inside the budget ends the trajectory
        if not ended:
            assert len(row) > len(behavior_ids) or len(row) == args.max_completion_length
    # Exact behavior log-probs on the prefix, as for full responses.
    snapshot = _model_with(make_model, record["snapshot"])
    ref, _ = batch_reference_logps(snapshot, batch, args.temperature)
    prefix = batch["prefix_mask"].bool()
    torch.testing.assert_close(batch["behavior_per_token_logps"][prefix], ref[prefix], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("enabled", [True, False])
def test_position_statistics_switch(tmp_path, enabled, make_trainer):
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=2, log_position_statistics=enabled)
    trainer = make_trainer(args)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    keys = {k for h in logs for k in h if k.startswith("soup/position/")}
    if not enabled:
        assert keys == set()
        return
    assert keys == {f"soup/position/{name}/bin_{i}" for name in ("entropy", "clip_ratio") for i in range(10)}
    for h in logs:
        clip = [h[f"soup/position/clip_ratio/bin_{i}"] for i in range(10)]
        assert all(c is None or 0.0 <= c <= 1.0 for c in clip)
        assert all(
            h[f"soup/position/entropy/bin_{i}"] is None or h[f"soup/position/entropy/bin_{i}"] >= 0 for i in range(10)
        )
        assert h["soup/position/entropy/bin_0"] is not None  # every response has a first 10%


@pytest.mark.parametrize("peft", [False, True])
def test_sampling_logps_equal_a_scoring_forward(tmp_path, tokenizer, peft, make_trainer):
    """The local backend reads behavior log-probs and entropies from generate's own forward passes; they equal a
    separate scoring forward of the sampled responses (left-padded prompts of unequal lengths, EOS mid-batch)."""
    kwargs = {}
    if peft:
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        )
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_completion_length=12)
    trainer = make_trainer(args, **kwargs)
    behavior = trainer.behavior
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("1+2=", "copy:123=", "9", "45+6=")]
    samples = behavior.sample(prompts, 12, generation_batch_index=1)
    mask = samples.mask.bool()
    assert samples.completion_ids.size(1) > 1 and mask.sum() > 4
    responses = [samples.completion_ids[i, mask[i]].tolist() for i in range(len(prompts))]
    logps, entropies = behavior.score(prompts, responses)
    width = logps.size(1)
    torch.testing.assert_close(
        samples.per_token_logps[:, :width][mask[:, :width]], logps[mask[:, :width]], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        samples.entropies[:, :width][mask[:, :width]], entropies[mask[:, :width]], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("peft", [False, True])
def test_shared_prompt_prefill_changes_no_sample(tmp_path, tokenizer, monkeypatch, peft, make_trainer):
    """The behavior copy prefills each distinct prompt once and expands its KV cache to the rows that repeat it: the
    same tokens, log-probs and entropies as a prefill of every row (same seed), from a first forward over the distinct
    prompts only."""
    from trl_soup.behavior import local

    kwargs = {}
    if peft:
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        )
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_completion_length=12, temperature=1.5)
    trainer = make_trainer(args, **kwargs)
    behavior = trainer.behavior
    texts = ["1+2=", "copy:123=", "1+2=", "9", "copy:123=", "1+2=", "45+6=", "9"]  # 4 distinct, unequal lengths
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    shapes = []
    hooked = trainer.accelerator.unwrap_model(trainer.model).get_base_model() if peft else behavior.snapshot
    handle = hooked.register_forward_pre_hook(
        lambda m, a, k: shapes.append(tuple(k["input_ids"].shape)), with_kwargs=True
    )
    try:
        shared = behavior.sample(prompts, 12, generation_batch_index=3)
    finally:
        handle.remove()
    width = max(len(p) for p in prompts)
    assert shapes[0] == (4, width - 1) and shapes[1] == (8, 1)  # distinct prompts, then the last prompt position
    monkeypatch.setattr(local, "shared_prompt_cache", lambda *a, **k: None)
    plain = behavior.sample(prompts, 12, generation_batch_index=3)
    assert shared.completion_ids.size(1) > 2
    assert torch.equal(shared.completion_ids, plain.completion_ids) and torch.equal(shared.mask, plain.mask)
    torch.testing.assert_close(shared.per_token_logps, plain.per_token_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.entropies, plain.entropies, atol=1e-5, rtol=1e-5)
    # Rows with the same prompt still get their own samples.
    assert len({tuple(shared.completion_ids[i].tolist()) for i in (0, 2, 5)}) > 1


def test_shared_prompt_cache_falls_back_to_a_plain_prefill(make_model):
    """No shared prefill (None: generate prefills every row itself) when the forward takes no logits_to_keep, returns
    no cache, or returns a cache whose layers are not plain key/value layers; a plain model gets one."""
    from types import SimpleNamespace

    from trl_soup.behavior.local import shared_prompt_cache

    ids = torch.tensor([[0, 5, 6, 7], [0, 5, 6, 7], [3, 4, 6, 7]])
    mask = (ids != 0).long()

    def no_logits_to_keep(input_ids, attention_mask, position_ids, use_cache):
        raise AssertionError("not reached")

    assert shared_prompt_cache(no_logits_to_keep, ids, mask) is None
    assert shared_prompt_cache(lambda **k: SimpleNamespace(past_key_values=None), ids, mask) is None
    odd = SimpleNamespace(layers=[object()], batch_select_indices=lambda i: None)
    assert shared_prompt_cache(lambda **k: SimpleNamespace(past_key_values=odd), ids, mask) is None
    cache = shared_prompt_cache(make_model(seed=0).eval(), ids, mask)
    assert cache is not None and cache.get_seq_length() == 3 and cache.layers[0].keys.size(0) == 3


def test_shared_prompt_rows():
    from trl_soup.behavior.local import shared_prompt_rows

    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 5, 6], [0, 5, 6], [7, 8, 9], [0, 0, 4]])
    mask = (ids != 0).long()
    first, inverse = shared_prompt_rows(ids, mask)
    assert sorted(first.tolist()) == [0, 1, 5]  # the first row of each distinct prompt
    assert torch.equal(ids[first][inverse], ids) and torch.equal(mask[first][inverse], mask)
    assert shared_prompt_rows(ids[:2], mask[:2]) is None  # all distinct: nothing to share
    # Same ids, different padding: not the same prompt.
    assert shared_prompt_rows(torch.tensor([[0, 4], [0, 4]]), torch.tensor([[0, 1], [1, 1]])) is None


def test_snapshot_follows_the_learner_dtype(tmp_path, tokenizer, make_trainer):
    """DeepSpeed bf16 casts the learner when training starts, after the behavior copy was built: the next refresh
    casts the copy too (same precision, no float32 copy kept next to a bf16 learner) and copies the weights exactly."""
    args = soup_args(tmp_path, behavior_refresh_interval=2)
    trainer = make_trainer(args)
    snapshot = trainer.behavior.snapshot
    assert next(snapshot.parameters()).dtype == torch.float32
    learner = trainer.accelerator.unwrap_model(trainer.model).to(torch.bfloat16)
    trainer.behavior.refresh()
    assert {p.dtype for p in snapshot.parameters()} == {torch.bfloat16}
    for name, value in learner.state_dict().items():
        assert torch.equal(snapshot.state_dict()[name], value), name
    prompts = [tokenizer("1+2=", add_special_tokens=False)["input_ids"]]
    samples = trainer.behavior.sample(prompts, 4, generation_batch_index=1)  # runs in bf16
    assert samples.per_token_logps.dtype == torch.float32 and torch.isfinite(samples.per_token_logps).all()


def test_relay_sampling_emits_no_deprecation_warning_of_its_own(tmp_path, make_trainer):
    """Under transformers 5.24 the local backend passed `past_key_values=` to generate (FutureWarning: use `cache`;
    issue 24, item 9). No FutureWarning or DeprecationWarning may come from trl_soup's own code, in either
    environment the suite runs in."""
    import warnings

    trainer = make_trainer(soup_args(tmp_path, behavior_refresh_interval=2, max_steps=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    ours = [
        w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning)) and "trl_soup" in w.filename
    ]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
    assert trainer.state.log_history[-2]["soup/relay_batch"] == 1.0  # the relay path (and its shared prefill) ran
