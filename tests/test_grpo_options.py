"""GRPO loss options that SOUP supports with the mixed denominator of Eq. 5 (once refused).

SOUP's loss is TRL's loss with ``old_per_token_logps`` replaced by the mixed denominator (pi_behavior on the prefix,
pi_old on the continuation). So for every loss type and option built from ``log pi_theta - log(denominator)``,
SOUPTrainer's loss on a relay batch must equal GRPOTrainer's loss on the same batch whose ``old_per_token_logps`` is
that mixed denominator, and differ from GRPOTrainer's loss with plain pi_old. Sequence-level weights get a
hand-computed check too (docs/equations.md, "Sequence-level weights").
"""

from __future__ import annotations

import math

import pytest
import torch
from testing_utils import SEQUENCE_LEVEL_OPTIONS, soup_args

from trl_soup import SOUPConfig
from trl_soup.config import LOSS_TYPES
from trl_soup.core import mixed_old_per_token_logps, sequence_log_importance_weights

OPTIONS = {
    "sequence_is": dict(importance_sampling_level="sequence"),
    "off_policy_mask": dict(off_policy_mask_threshold=0.01),
}


def test_sequence_log_importance_weights_hand_example():
    per_token = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-0.5, -0.5, 0.0, 0.0]])
    behavior = torch.tensor([[-1.5, -2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    old = torch.tensor([[-9.0, -9.0, -2.0, 0.0], [-1.0, -0.25, 0.0, 0.0]])
    prefix = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    denominator = mixed_old_per_token_logps(prefix, behavior, old)
    got = sequence_log_importance_weights(per_token, denominator, mask)
    # row 0: prefix tokens (-1 + 1.5) + (-2 + 2), continuation (-3 + 2), over 3 tokens; row 1: on-policy tokens only
    expected = torch.tensor([[(0.5 + 0.0 - 1.0) / 3], [(0.5 - 0.25) / 2]])
    torch.testing.assert_close(got, expected)
    # the weight is the geometric mean of the token ratios
    ratios = torch.exp(per_token - denominator)
    assert math.isclose(got[0, 0].exp().item(), (ratios[0, :3].prod() ** (1 / 3)).item(), rel_tol=1e-6)
    empty = sequence_log_importance_weights(per_token, denominator, torch.zeros_like(mask))
    assert torch.equal(empty, torch.zeros(2, 1))


def _set(trainers, **attributes):
    saved = [{k: getattr(t, k) for k in attributes} for t in trainers]
    for t in trainers:
        for k, v in attributes.items():
            setattr(t, k, v)
    return saved


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("option", [None, *OPTIONS])
def test_relay_loss_is_trl_loss_with_the_mixed_denominator(trained, loss_type, option):
    soup, grpo, batch = trained
    attributes = {"loss_type": loss_type, **(OPTIONS[option] if option else {})}
    if loss_type == "cispo":  # CISPO caps the ratio at epsilon_high (its papers use ~5): 0.28 would cap every token
        attributes["epsilon_high"] = 5.0
    saved = _set((soup, grpo), **attributes)
    mixed = mixed_old_per_token_logps(
        batch["prefix_mask"], batch["behavior_per_token_logps"], batch["old_per_token_logps"]
    )
    try:
        with torch.no_grad():
            loss = soup._compute_loss(soup.model, batch)
            expected = grpo._compute_loss(grpo.model, {**batch, "old_per_token_logps": mixed})
            plain = grpo._compute_loss(grpo.model, batch)
    finally:
        for t, values in zip((soup, grpo), saved, strict=True):
            for k, v in values.items():
                setattr(t, k, v)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    assert (loss - plain).abs() > 1e-7, "the batch cannot tell the mixed denominator from pi_old"


def test_sequence_level_dapo_loss_by_hand(trained):
    """importance_sampling_level="sequence" with dapo: one clipped weight s_i per sequence (geometric mean of the
    Eq. 5 ratios), applied to every token of the sequence, normalised by the tokens of the batch."""
    soup, _, batch = trained
    saved = _set((soup,), importance_sampling_level="sequence", loss_type="dapo")
    try:
        with torch.no_grad():
            loss = soup._compute_loss(soup.model, batch)
            per_token_logps, _, _ = soup._get_per_token_logps_and_entropies(
                soup.model,
                torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
                torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
                batch["completion_ids"].size(1),
            )
    finally:
        _set((soup,), **saved[0])
    mask = batch["completion_mask"].float()
    denominator = mixed_old_per_token_logps(
        batch["prefix_mask"], batch["behavior_per_token_logps"], batch["old_per_token_logps"]
    )
    weight = sequence_log_importance_weights(per_token_logps, denominator, mask).exp()  # (B, 1)
    advantages = batch["advantages"].unsqueeze(1)
    surrogate = torch.minimum(
        weight * advantages, weight.clamp(1 - soup.args.epsilon, 1 + soup.args.epsilon_high) * advantages
    )
    normalizer = (
        batch["num_items_in_batch"] * soup.current_gradient_accumulation_steps / soup.args.steps_per_generation
    )
    expected = -(surrogate * mask).sum() / normalizer
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("settings", [*SEQUENCE_LEVEL_OPTIONS, dict(cast_lm_head_to_fp32=True)])
@pytest.mark.parametrize("refresh_interval", [1, 2])
def test_options_train_at_t1_and_t2(settings, refresh_interval, tmp_path, make_trainer):
    """Accepted by SOUPConfig and SOUPTrainer at T = 1 (plain DAPO, as GRPOTrainer) and on relay batches."""
    # The separate pi_old forward (not the default): the batch holds pi_old for GRPOTrainer's loss on the same batch.
    args = soup_args(
        tmp_path,
        behavior_refresh_interval=refresh_interval,
        max_steps=2,
        old_logps_from_loss_forward=False,
        **settings,
    )
    trainer = make_trainer(args)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert [h["soup/relay_batch"] for h in logs] == ([0.0, 1.0] if refresh_interval == 2 else [0.0, 0.0])


@pytest.mark.parametrize("tied", [False, True])
def test_cast_lm_head_to_fp32_is_shared_by_the_behavior_copy(tied, tmp_path, make_model, make_trainer):
    """A bf16 model with TRL's float32 LM head: the snapshot has the float32 head too, and at identical weights
    (learning_rate=0) the prefix ratio is 1 (within the continuation's |log r| + 1e-6)."""
    model = make_model(seed=0, tie_word_embeddings=tied).to(torch.bfloat16)
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=4, learning_rate=0.0, cast_lm_head_to_fp32=True)
    trainer = make_trainer(args, model=model)
    trainer.train()
    snapshot = trainer.behavior.snapshot
    assert snapshot.get_output_embeddings().weight.dtype == torch.float32
    assert snapshot.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    relay = [h for h in trainer.state.log_history if h.get("soup/relay_batch") == 1.0]
    assert len(relay) == 2
    for h in relay:
        assert h["soup/log_ratio/prefix_abs_mean"] <= h["soup/log_ratio/continuation_abs_mean"] + 1e-6, h


def test_unknown_loss_type_has_its_own_message(tmp_path):
    with pytest.raises(
        ValueError, match=r"loss_type='nope' is not a loss type of TRL 1.16\. Allowed values: \['dapo'"
    ):
        SOUPConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, loss_type="nope")
