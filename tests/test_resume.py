"""Checkpoints carry SOUP's state: resuming mid-window reproduces the uninterrupted run."""

from __future__ import annotations

import os

import pytest
import torch
from testing_utils import soup_args

from trl_soup.trainer import SNAPSHOT_DIR, SOUP_STATE_FILE


def _run(tmp_path, name, make_trainer, resume=None, peft_config=None, **overrides):
    settings = dict(behavior_refresh_interval=3, max_steps=6, save_strategy="steps", save_steps=2)
    settings.update(overrides)
    args = soup_args(tmp_path / name, **settings)
    trainer = make_trainer(args, peft_config=peft_config)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _by_step(trainer, key):
    return {h["step"]: h[key] for h in trainer.state.log_history if key in h}


@pytest.mark.slow
def test_resume_mid_window_matches_uninterrupted(tmp_path, make_trainer, monkeypatch):
    full = _run(tmp_path, "full", make_trainer)
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-4")
    state = torch.load(os.path.join(checkpoint, SOUP_STATE_FILE), weights_only=True)
    # After 4 generation batches with T = 3 the next batch is a relay batch: the snapshot must be in the checkpoint.
    assert state["generation_batch_index"] == 4 and state["behavior_snapshot"]
    assert os.path.isdir(os.path.join(checkpoint, SNAPSHOT_DIR))
    boundary = os.path.join(full.args.output_dir, "checkpoint-6")
    at_boundary = torch.load(os.path.join(boundary, SOUP_STATE_FILE), weights_only=True)
    assert at_boundary["generation_batch_index"] == 6 and not at_boundary["behavior_snapshot"]
    assert not os.path.exists(os.path.join(boundary, SNAPSHOT_DIR))

    resumed = _run(tmp_path, "resumed", make_trainer, resume=checkpoint)
    for key in ("loss", "reward", "soup/log_ratio/prefix_abs_mean", "soup/behavior_age"):
        expected, got = _by_step(full, key), _by_step(resumed, key)
        assert {5, 6} <= set(got), key
        for step in (5, 6):
            assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), (key, step)
    assert resumed.generation_batch_index == 6

    # Negative control: without restoring the snapshot, the resumed run diverges.
    from trl_soup.behavior.local import LocalBehaviorBackend

    monkeypatch.setattr(LocalBehaviorBackend, "load_snapshot", lambda self, directory: None)
    broken = _run(tmp_path, "broken", make_trainer, resume=checkpoint)
    diverged = [abs(_by_step(broken, "loss")[s] - _by_step(full, "loss")[s]) > 1e-6 for s in (5, 6)]
    assert any(diverged)


def test_resume_refuses_other_refresh_interval(tmp_path, make_trainer):
    full = _run(tmp_path, "a", make_trainer, max_steps=2)
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-2")
    args = soup_args(tmp_path / "b", behavior_refresh_interval=4, max_steps=4)
    trainer = make_trainer(args)
    with pytest.raises(ValueError, match="behavior_refresh_interval"):
        trainer.train(resume_from_checkpoint=checkpoint)


def test_resume_mid_window_with_peft(tmp_path, make_trainer):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    full = _run(tmp_path, "full", make_trainer, peft_config=lora, learning_rate=5e-2)
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-4")
    assert os.path.isdir(os.path.join(checkpoint, SNAPSHOT_DIR))
    # Only the trained adapter is saved as the model: a "behavior" sub-folder would make transformers' resume skip
    # the trained adapter at the root.
    assert os.path.isfile(os.path.join(checkpoint, "adapter_model.safetensors"))
    assert not os.path.exists(os.path.join(checkpoint, "behavior"))
    resumed = _run(tmp_path, "resumed", make_trainer, resume=checkpoint, peft_config=lora, learning_rate=5e-2)
    for key in ("loss", "reward", "soup/log_ratio/prefix_abs_mean"):
        expected, got = _by_step(full, key), _by_step(resumed, key)
        for step in (5, 6):
            assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), (key, step)
    # The behavior adapter really differs from the trained one at the resumed relay steps.
    assert _by_step(full, "soup/log_ratio/prefix_abs_mean")[6] > 0
