"""`old_logps_from_loss_forward`: pi_old of the continuation read from the loss forward instead of a forward of its
own.

With generation and optimisation aligned, pi_old is the loss forward's weights, so the Eq. 5 denominator can be built
inside the loss: behavior log-probs on the prefix, the loss forward's detached log-probs on the continuation. These
tests check the loss and its gradient against the explicit denominator, and whole runs with and without the option.
"""

from __future__ import annotations

import pytest
import torch
from testing_utils import RecordingTrainer, batch_reference_logps, soup_args

from trl_soup.core import mixed_old_per_token_logps


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    trainer.model.zero_grad()
    return loss.detach(), grads


def test_deferred_denominator_gives_the_explicit_eq5_loss(trained):
    soup, _, batch = trained
    soup.model.train()
    # pi_old when generation and optimisation are aligned: the learner as it is now, scored independently.
    current_logps, _ = batch_reference_logps(soup.model, batch, soup.args.temperature)
    explicit = {**batch, "old_per_token_logps": current_logps}
    deferred = {**batch, "old_per_token_logps": None}
    saved = soup.args.old_logps_from_loss_forward
    try:
        soup.args.old_logps_from_loss_forward = False
        with pytest.raises(RuntimeError, match="without old_per_token_logps"):
            soup._compute_loss(soup.model, deferred)  # the contract: never a silent ratio of 1 on the prefix
        expected_loss, expected_grads = _loss_and_grads(soup, explicit)
        soup.args.old_logps_from_loss_forward = True
        loss, grads = _loss_and_grads(soup, deferred)
    finally:
        soup.args.old_logps_from_loss_forward = saved
    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=1e-6)
    assert len(grads) == len(expected_grads) > 0
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)
    # The prefix ratio is pi_theta / pi_behavior (not 1): the continuation's log-ratio is 0, the prefix's is not.
    metrics = soup._metrics["train"]
    assert metrics["soup/log_ratio/continuation_abs_mean"][-1] == pytest.approx(0.0, abs=1e-6)
    prefix = batch["prefix_mask"].bool() & batch["completion_mask"].bool()
    gap = (current_logps - batch["behavior_per_token_logps"])[prefix].abs().mean().item()
    assert gap > 1e-3
    assert metrics["soup/log_ratio/prefix_abs_mean"][-1] == pytest.approx(gap, rel=1e-4)
    assert batch.get("old_per_token_logps") is not None  # the caller's batch is not modified


def test_deferred_denominator_equals_eq5_of_the_loss_forward(trained, monkeypatch):
    """The tensor TRL divides by is exactly mixed_old_per_token_logps(prefix, behavior, loss-forward log-probs)."""
    soup, _, batch = trained
    seen = {}
    forward, statistics = soup._get_per_token_logps_and_entropies, soup._log_segment_statistics

    def recording_forward(*args, **kwargs):
        result = forward(*args, **kwargs)
        seen["logps"] = result[0].detach().clone()
        return result

    def recording_statistics(inputs, *args):
        seen["denominator"] = inputs["old_per_token_logps"]
        return statistics(inputs, *args)

    monkeypatch.setattr(soup, "_get_per_token_logps_and_entropies", recording_forward)
    monkeypatch.setattr(soup, "_log_segment_statistics", recording_statistics)
    monkeypatch.setattr(soup.args, "old_logps_from_loss_forward", True)
    with torch.no_grad():
        soup._compute_loss(soup.model, {**batch, "old_per_token_logps": None})
    expected = mixed_old_per_token_logps(batch["prefix_mask"], batch["behavior_per_token_logps"], seen["logps"])
    assert torch.equal(seen["denominator"], expected)
    assert not torch.equal(expected, batch["behavior_per_token_logps"])  # the continuation was filled in


class CountingTrainer(RecordingTrainer):
    """Counts the log-prob forwards that are not the loss forward (pi_old and any other scoring pass)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scoring_forwards = 0
        self.losses = []

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            self.scoring_forwards += 1
        return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        self.losses.append(loss.item())
        return loss


@pytest.mark.parametrize("accumulation", [1, 2])
def test_runs_with_and_without_the_option_are_the_same(tmp_path, make_trainer, accumulation):
    """Same seed, aligned generation (one generation batch split over `accumulation` micro-steps): the same
    trajectories, losses and final weights, with no scoring forward at all when the option is on."""
    runs = {}
    for option in (False, True):
        args = soup_args(
            tmp_path / str(option),
            behavior_refresh_interval=3,
            max_steps=6,
            prefix_ratio=0.5,
            per_device_train_batch_size=8 // accumulation,
            gradient_accumulation_steps=accumulation,
            old_logps_from_loss_forward=option,
        )
        trainer = make_trainer(args, trainer_class=CountingTrainer)
        trainer.train()
        runs[option] = trainer
    off, on = runs[False], runs[True]
    relay = [r["relay"] is not None for r in off.records]
    assert sum(relay) == 4  # 6 generation batches at T = 3: 2 on-policy, 4 relay
    assert off.scoring_forwards == 4 and on.scoring_forwards == 0  # one pi_old forward per relay batch, or none
    for a, b, is_relay in zip(off.records, on.records, relay, strict=True):
        assert torch.equal(a["batch"]["completion_ids"], b["batch"]["completion_ids"])
        assert torch.equal(a["batch"]["prefix_mask"], b["batch"]["prefix_mask"])
        assert (a["batch"].get("old_per_token_logps") is not None) == is_relay
        assert b["batch"].get("old_per_token_logps") is None
    assert len(off.losses) == len(on.losses) == 6 * accumulation
    torch.testing.assert_close(torch.tensor(on.losses), torch.tensor(off.losses), atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(off.model.named_parameters(), on.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "settings, warns",
    [
        (dict(num_iterations=2), True),  # the weights change between generation and the second iteration's loss
        (
            dict(steps_per_generation=2, per_device_train_batch_size=4),
            True,
        ),  # one generation feeds two optimizer steps
        (dict(gradient_accumulation_steps=2, per_device_train_batch_size=4), False),  # aligned: the option applies
        ({}, False),
    ],
)
def test_option_without_effect_is_reported(tmp_path, make_trainer, settings, warns):
    import warnings

    args = soup_args(tmp_path, old_logps_from_loss_forward=True, **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(args, trainer_class=CountingTrainer)
    messages = [str(w.message) for w in caught if "old_logps_from_loss_forward" in str(w.message)]
    assert bool(messages) == warns, messages
    if warns:
        assert "no effect" in messages[0] and "TRL computes pi_old itself" in messages[0]
