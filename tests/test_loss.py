"""The loss that SOUPTrainer optimises: Eq. 1 with the mixed ratio of Eq. 5, and TRL's GRPO loss without a prefix."""

from __future__ import annotations

import pytest
import torch
from testing_utils import batch_reference_logps

from trl_soup.core import dapo_token_loss

TOKEN_LEVEL = ["dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo"]


def _restore_loss_type(*trainers):
    for t in trainers:
        t.loss_type = t.args.loss_type


@pytest.mark.parametrize("loss_type", TOKEN_LEVEL)
def test_empty_prefix_loss_equals_grpo(trained, loss_type):
    soup, grpo, batch = trained
    zeroed = {**batch, "prefix_mask": torch.zeros_like(batch["prefix_mask"])}
    try:
        soup.loss_type = grpo.loss_type = loss_type
        with torch.no_grad():
            soup_loss = soup._compute_loss(soup.model, zeroed)
            grpo_loss = grpo._compute_loss(grpo.model, zeroed)
    finally:
        _restore_loss_type(soup, grpo)
    torch.testing.assert_close(soup_loss, grpo_loss, atol=1e-6, rtol=1e-6)
    assert soup_loss.abs() > 0


def test_relay_loss_is_eq1_with_mixed_ratio(trained, make_model):
    soup, grpo, batch = trained
    with torch.no_grad():
        loss = soup._compute_loss(soup.model, batch)
        grpo_loss = grpo._compute_loss(grpo.model, batch)
    current = make_model(seed=5)
    current.load_state_dict(dict(soup.model.state_dict().items()))
    current.eval()
    per_token_logps, _ = batch_reference_logps(current, batch, soup.args.temperature)
    expected = dapo_token_loss(
        per_token_logps,
        batch["old_per_token_logps"],
        batch["behavior_per_token_logps"],
        batch["prefix_mask"],
        batch["advantages"],
        batch["completion_mask"],
        soup.args.epsilon,
        soup.args.epsilon_high,
        num_items=batch["num_items_in_batch"],
    )
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    # GRPO would weight the prefix by pi_theta / pi_old instead: a different value on this batch.
    assert (loss - grpo_loss).abs() > 1e-6


def test_loss_gradient_flows_only_through_pi_theta(trained):
    soup, _, batch = trained
    soup.model.zero_grad()
    loss = soup._compute_loss(soup.model, batch)
    loss.backward()
    grads = [p.grad for p in soup.model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert not batch["behavior_per_token_logps"].requires_grad and not batch["old_per_token_logps"].requires_grad
    soup.model.zero_grad()
