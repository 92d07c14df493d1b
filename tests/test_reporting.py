"""What reaches loggers and the model card: no None metric, the behavior prefix in the completions table, SOUP in
the model card with a sensible line for a local base model."""

from __future__ import annotations

import glob
import logging
import math
import os

import pandas as pd
import pytest
from testing_utils import digit_share_reward, soup_args

from trl_soup import SOUPTrainer
from trl_soup.reporting import drop_empty_metrics, prefix_columns


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _train(tmp_path, tokenizer, model, dataset, **overrides):
    args = soup_args(tmp_path, behavior_refresh_interval=2, **overrides)
    trainer = SOUPTrainer(
        model=model, reward_funcs=digit_share_reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    return trainer


def test_drop_empty_metrics():
    metrics = {"a": [float("nan"), 1.0], "b": [float("nan")], "c": [], "d": [float("inf")]}
    assert drop_empty_metrics(metrics) == ["b", "c"]
    assert list(metrics) == ["a", "d"]


def test_prefix_columns():
    columns = prefix_columns([[5, 6, 7], [8, 9]], [2, 0], lambda ids: "".join(chr(96 + i) for i in ids))
    assert columns == {"behavior_prefix": ["ef", ""], "behavior_prefix_tokens": [2, 0]}


def test_tensorboard_run_logs_no_none(tmp_path, tokenizer, make_model, prompt_dataset):
    """A 10-step TensorBoard run with on-policy batches (T = 2) and position bins: transformers' TensorBoard callback
    warns for every None it is handed; with SOUP's NaN-only metrics left out it is handed none."""
    pytest.importorskip("tensorboard")
    from transformers.utils import logging as hf_logging

    handler = _Collect()
    logger = logging.getLogger("transformers.integrations.integration_utils")
    logger.addHandler(handler)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        trainer = _train(
            tmp_path,
            tokenizer,
            make_model(),
            prompt_dataset,
            max_steps=10,
            report_to="tensorboard",
            log_position_statistics=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        logger.removeHandler(handler)
    assert glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)  # TensorBoard did write
    assert [m for m in handler.messages if "None" in m] == []
    logs = [h for h in trainer.state.log_history if "soup/relay_batch" in h]
    assert len(logs) == 10
    assert all(v is not None for h in logs for v in h.values())
    on_policy = [h for h in logs if h["soup/relay_batch"] == 0.0]
    relay = [h for h in logs if h["soup/relay_batch"] == 1.0]
    assert on_policy and relay
    # The prefix statistics exist on relay steps only; the continuation's on every step.
    assert all("soup/clip_ratio/prefix" not in h and "soup/clip_ratio/continuation" in h for h in on_policy)
    assert all(math.isfinite(h["soup/clip_ratio/prefix"]) for h in relay)


def test_log_completions_shows_the_behavior_prefix(tmp_path, tokenizer, make_model, prompt_dataset):
    trainer = _train(tmp_path, tokenizer, make_model(), prompt_dataset, max_steps=2, log_completions=True)
    tables = sorted(glob.glob(str(tmp_path / "out" / "completions" / "*.parquet")))
    assert len(tables) == 2
    on_policy, relay = (pd.read_parquet(path) for path in tables)
    assert (on_policy["behavior_prefix_tokens"] == 0).all() and (on_policy["behavior_prefix"] == "").all()
    assert (relay["behavior_prefix_tokens"] > 0).any()
    record = trainer.last_relay_record
    expected = [
        tokenizer.decode(ids[:k], skip_special_tokens=True)
        for ids, k in zip(record.behavior_completion_ids, record.prefix_lengths.tolist(), strict=True)
    ]
    assert relay["behavior_prefix_tokens"].tolist() == record.prefix_lengths.tolist()
    assert relay["behavior_prefix"].tolist() == expected
    for completion, prefix in zip(relay["completion"], relay["behavior_prefix"], strict=True):
        assert completion.startswith(prefix)  # the completion is the prefix, then the continuation


def test_model_card_names_soup_and_a_local_base_model(tmp_path, tokenizer, make_model, prompt_dataset):
    base = tmp_path / "my-local-base"
    model = make_model()
    model.save_pretrained(base)
    model.config._name_or_path = str(base)
    _train(tmp_path, tokenizer, model, prompt_dataset, max_steps=2, save_strategy="steps", save_steps=2)
    card = open(os.path.join(tmp_path, "out", "README.md"), encoding="utf-8").read()
    assert "huggingface.co/None" not in card and "[None]" not in card
    assert "a local model (`my-local-base`, not on the Hub)" in card
    assert "trained with SOUP" in card and "https://huggingface.co/papers/2601.21476" in card
    assert "@article{yang2026soup" in card and "eprint       = {arXiv:2601.21476}" in card


@pytest.mark.parametrize("bad", [None, float("nan")])
def test_reward_function_that_scores_nothing_is_named(tmp_path, tokenizer, make_model, prompt_dataset, bad):
    def unscored_reward(prompts, completions, **kwargs):
        return [bad] * len(completions)

    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=1)
    trainer = SOUPTrainer(
        model=make_model(),
        reward_funcs=[digit_share_reward, unscored_reward],
        args=args,
        train_dataset=prompt_dataset,
        processing_class=tokenizer,
    )
    with pytest.warns(UserWarning, match="'unscored_reward' returned None or NaN for every completion.*adds nothing"):
        trainer.train()
    alone = SOUPTrainer(
        model=make_model(),
        reward_funcs=unscored_reward,
        args=soup_args(tmp_path, max_steps=1),
        train_dataset=prompt_dataset,
        processing_class=tokenizer,
    )
    with pytest.warns(UserWarning, match="'unscored_reward'.*the loss is 0 and nothing is learned"):
        alone.train()
