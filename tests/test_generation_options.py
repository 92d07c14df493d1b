"""GRPO generation and precision options on relay batches: the behavior log-probs stay exact.

With ``learning_rate=0`` the behavior copy equals the learner at every relay batch, so the prefix ratio
pi_theta / pi_behavior must be 1 up to float error; each test checks it through ``soup/log_ratio/prefix_abs_mean``
(and an independent forward where the code path under test is the log-prob computation itself).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from testing_utils import reference_logps, soup_args

from trl_soup import SOUPConfig


def _train(tmp_path, make_trainer, model=None, **overrides):
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=4, learning_rate=0.0, **overrides)
    trainer = make_trainer(args, model=model)
    trainer.train()
    relay = [h for h in trainer.state.log_history if h.get("soup/relay_batch") == 1.0]
    assert len(relay) == 2
    return trainer, relay


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_relay_batches_with_a_cache_implementation(cache_implementation, tmp_path, make_trainer):
    """GRPOConfig.cache_implementation reaches generate; the shared prompt prefill (which passes its own cache) steps
    aside instead of crashing generate."""
    _, relay = _train(tmp_path, make_trainer, cache_implementation=cache_implementation)
    for h in relay:
        assert h["soup/prefix_fraction"] > 0
        assert h["soup/log_ratio/prefix_abs_mean"] < 1e-5, h


@pytest.mark.parametrize("precision", ["bf16_autocast", "bf16_weights"])
def test_bf16_prefix_ratio_is_no_larger_than_the_continuation(precision, tmp_path, make_model, make_trainer):
    """Under bf16 the behavior log-probs are computed in the same precision context as the loss forward (the
    accelerator's autocast and TRL's fused head), and a bf16 snapshot carries the learner's bf16 rotary buffers.
    Before, the prefix |log r| was about 1e-3 at identical weights while the continuation's was 0."""
    model = make_model(seed=0)
    overrides = {}
    if precision == "bf16_autocast":
        overrides["bf16"] = True
    else:
        model = model.to(torch.bfloat16)
    trainer, relay = _train(tmp_path, make_trainer, model, **overrides)
    assert trainer.behavior.score_after_sampling
    for h in relay:
        assert h["soup/log_ratio/prefix_abs_mean"] <= h["soup/log_ratio/continuation_abs_mean"] + 1e-6, h


def test_a_generate_that_runs_no_forward_falls_back_to_scoring(tmp_path, tokenizer, make_trainer, monkeypatch):
    """A patched or assisted generate does not run one forward per token; the behavior log-probs then come from a
    scoring forward of the behavior copy instead of an error."""
    digits = tokenizer("1234567", add_special_tokens=False)["input_ids"]

    def fixed_generate(self, input_ids=None, **kwargs):  # writes 7 digit tokens without calling forward
        tail = torch.tensor(digits, device=input_ids.device).expand(input_ids.size(0), -1)
        return torch.cat([input_ids, tail], dim=1)

    monkeypatch.setattr(transformers.GenerationMixin, "generate", fixed_generate)
    trainer, relay = _train(tmp_path, make_trainer)
    for h in relay:
        assert h["soup/prefix_fraction"] > 0
        assert h["soup/log_ratio/prefix_abs_mean"] < 1e-5, h
    record = trainer.last_relay_record
    assert all(ids == digits for ids in record.behavior_completion_ids)
    # The fallback's log-probs equal an independent forward of the snapshot.
    prompt = torch.tensor([tokenizer("3+4=", add_special_tokens=False)["input_ids"]])
    samples = trainer.behavior.sample(prompt.tolist(), len(digits), trainer.generation_batch_index)
    snapshot = trainer.behavior.snapshot
    expected, _ = reference_logps(
        snapshot, prompt, torch.ones_like(prompt), samples.completion_ids, samples.mask, trainer.args.temperature
    )
    torch.testing.assert_close(samples.per_token_logps, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["num_beams", "num_beam_groups"])
def test_beam_search_refused_on_relay_batches_only(name, tmp_path):
    with pytest.raises(ValueError, match=f"{name}.*behavior_refresh_interval=4.*Allowed"):
        SOUPConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            bf16=False,
            behavior_refresh_interval=4,
            generation_kwargs={name: 2},
        )
    # T = 1 is plain DAPO: whatever GRPOTrainer accepts.
    SOUPConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        behavior_refresh_interval=1,
        generation_kwargs={"num_beams": 2},
    )
    SOUPConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, behavior_refresh_interval=4, generation_kwargs={name: 1}
    )


def test_local_backend_prefix_ratio_with_sampling_filters(tmp_path, make_trainer):
    """top_p / top_k shape what is sampled, not the denominator: the behavior log-probs are the temperature-scaled
    softmax pi_theta is evaluated on (docs/deviations.md), so at identical weights the prefix ratio is 1."""
    trainer, relay = _train(tmp_path, make_trainer, top_p=0.9, top_k=20)
    assert trainer.generation_config.top_k == 20 and trainer.generation_config.top_p == 0.9
    for h in relay:
        assert h["soup/prefix_fraction"] > 0
        assert h["soup/log_ratio/prefix_abs_mean"] < 1e-5, h
