"""PEFT configurations users run: LoRA dropout, embedding LoRA, modules_to_save, trainable_token_indices, DoRA.

The behavior copy of a PEFT model is a second adapter. It must be a twin of every trainable tensor of the trained
adapter (or the copy drifts from the learner after each refresh), and it must be deterministic: no dropout in behavior
sampling or scoring, whatever ``disable_dropout`` says.
"""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import LoraConfig  # noqa: E402
from testing_utils import reference_logps, soup_args  # noqa: E402

from trl_soup.behavior.local import adapter_twin_name  # noqa: E402

ADAPTERS = {
    "lora_dropout": dict(target_modules=["q_proj", "v_proj"], lora_dropout=0.3),
    "embedding_lora": dict(target_modules=["q_proj", "embed_tokens"]),
    "modules_to_save": dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
    "trainable_token_indices": dict(target_modules=["q_proj"], trainable_token_indices=[3, 4, 5, 6, 7, 8]),
    "dora": dict(target_modules=["q_proj", "v_proj"], use_dora=True),
}


def _lora(**kwargs):
    # init_lora_weights=False: B is random, so the adapter changes the model from the first step on.
    return LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM", **kwargs)


def _probe(tokenizer):
    prompts = [
        tokenizer("3+4=", add_special_tokens=False)["input_ids"],
        tokenizer("5+6=", add_special_tokens=False)["input_ids"],
    ]
    completions = [
        tokenizer("7 and 12", add_special_tokens=False)["input_ids"],
        tokenizer("11 or 9", add_special_tokens=False)["input_ids"],
    ]
    length = min(len(c) for c in completions)
    return torch.tensor(prompts), torch.tensor([c[:length] for c in completions])


def _learner_logps(trainer, prompt_ids, completion_ids):
    """Independent forward of the learner (trained adapter active), in eval mode."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    try:
        logps, _ = reference_logps(
            model,
            prompt_ids,
            torch.ones_like(prompt_ids),
            completion_ids,
            torch.ones_like(completion_ids),
            trainer.args.temperature,
        )
    finally:
        model.train(was_training)
    return logps


def _behavior_logps(trainer, prompt_ids, completion_ids):
    logps, _ = trainer.behavior.score(prompt_ids.tolist(), completion_ids.tolist())
    return logps


def test_adapter_twin_name_compares_whole_components():
    assert (
        adapter_twin_name("m.q_proj.lora_A.default.weight", "default", "behavior") == "m.q_proj.lora_A.behavior.weight"
    )
    assert adapter_twin_name("m.embed_tokens.lora_embedding_A.default", "default", "behavior") == (
        "m.embed_tokens.lora_embedding_A.behavior"
    )
    assert adapter_twin_name("m.tok.trainable_tokens_delta.default", "default", "behavior") == (
        "m.tok.trainable_tokens_delta.behavior"
    )
    assert adapter_twin_name("m.default_layer.weight", "default", "behavior") is None
    assert adapter_twin_name("m.q_proj.base_layer.weight", "default", "behavior") is None


@pytest.mark.parametrize("kind", sorted(ADAPTERS))
def test_every_trainable_tensor_has_a_refreshed_behavior_twin(kind, tmp_path, tokenizer, make_trainer):
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=2, learning_rate=5e-2, disable_dropout=False)
    trainer = make_trainer(args, peft_config=_lora(**ADAPTERS[kind]))
    learner = trainer.accelerator.unwrap_model(trainer.model)
    trainable = {id(p) for p in learner.parameters() if p.requires_grad}
    assert {id(a) for a, _ in trainer.behavior._pairs} == trainable
    assert all(not b.requires_grad for _, b in trainer.behavior._pairs)

    trainer.train()  # two optimizer steps: the trained adapter has moved away from the last refresh
    prompt_ids, completion_ids = _probe(tokenizer)
    learner.train()  # as during training: dropout modules are active in the learner
    stale = _behavior_logps(trainer, prompt_ids, completion_ids) - _learner_logps(trainer, prompt_ids, completion_ids)
    assert stale.abs().max() > 1e-3, "the probe cannot tell a stale behavior copy from a fresh one"

    trainer.behavior.refresh()
    behavior = _behavior_logps(trainer, prompt_ids, completion_ids)
    torch.testing.assert_close(behavior, _learner_logps(trainer, prompt_ids, completion_ids), atol=1e-6, rtol=0)
    # Deterministic: scoring twice gives the same values (no dropout), and the learner's mode is restored.
    torch.testing.assert_close(_behavior_logps(trainer, prompt_ids, completion_ids), behavior, atol=0, rtol=0)
    assert learner.training
    assert learner.active_adapter == "default"


def test_lora_dropout_leaves_behavior_sampling_exact(tmp_path, make_trainer):
    """learning_rate=0: the behavior copy equals the learner at every relay batch, so with dropout disabled in the
    learner (disable_dropout=True) the prefix ratio is exactly 1, even though the behavior adapter was created with
    lora_dropout=0.3 after TRL disabled dropout."""
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=4, learning_rate=0.0, disable_dropout=True)
    trainer = make_trainer(args, peft_config=_lora(**ADAPTERS["lora_dropout"]))
    trainer.train()
    relay = [h for h in trainer.state.log_history if h.get("soup/relay_batch") == 1.0]
    assert len(relay) == 2
    for h in relay:
        assert h["soup/log_ratio/prefix_abs_mean"] < 1e-5, h
        assert h["soup/clip_ratio/prefix"] == 0.0, h


def test_full_model_behavior_copy_has_no_dropout(tmp_path, tokenizer, make_model, make_trainer):
    """Full fine-tuning with attention dropout kept on in the learner (disable_dropout=False): behavior samples and
    scores come from the snapshot without dropout, equal to an independent eval-mode forward of its weights."""
    model = make_model(seed=0)
    model.config.attention_dropout = 0.5
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=1, disable_dropout=False)
    trainer = make_trainer(args, model=model)
    trainer.train()
    trainer.model.train()
    snapshot = trainer.behavior.snapshot
    assert snapshot.config.attention_dropout == 0.5
    prompt_ids, completion_ids = _probe(tokenizer)
    first = _behavior_logps(trainer, prompt_ids, completion_ids)
    torch.testing.assert_close(_behavior_logps(trainer, prompt_ids, completion_ids), first, atol=0, rtol=0)
    expected, _ = reference_logps(
        snapshot,
        prompt_ids,
        torch.ones_like(prompt_ids),
        completion_ids,
        torch.ones_like(completion_ids),
        args.temperature,
    )
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=0)
    samples = trainer.behavior.sample(prompt_ids.tolist(), 6, trainer.generation_batch_index)
    rescored, _ = reference_logps(
        snapshot, prompt_ids, torch.ones_like(prompt_ids), samples.completion_ids, samples.mask, args.temperature
    )
    torch.testing.assert_close(samples.per_token_logps, rescored * samples.mask, atol=1e-5, rtol=0)
    assert not snapshot.training
