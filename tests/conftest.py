"""Shared fixtures: a tiny local model, tokenizer and prompt set (nothing is downloaded), a SOUPTrainer factory, and
the `gpu` marker's hook. Helpers that are not fixtures live in tests/testing_utils.py."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from trl_soup.toy import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def make_model(tokenizer):
    """Factory for a fresh tiny Qwen2 model with fixed weights (same seed -> same weights)."""
    from trl_soup.toy import build_tiny_model

    def make(seed: int = 0, tie_word_embeddings: bool = False):
        return build_tiny_model(tokenizer, seed=seed, tie_word_embeddings=tie_word_embeddings)

    return make


@pytest.fixture
def prompt_dataset():
    """`build_prompt_dataset()`: 32 prompts of equal length."""
    from testing_utils import build_prompt_dataset

    return build_prompt_dataset()


@pytest.fixture
def make_trainer(tokenizer, make_model, prompt_dataset):
    """Factory for the usual trainer of a test: `make_trainer(args, model=None, trainer_class=SOUPTrainer, **kwargs)`
    is `trainer_class(model=model, reward_funcs=digit_share_reward, args=args, train_dataset=prompt_dataset,
    processing_class=tokenizer, **kwargs)`, with a fresh `make_model(seed=0)` for `model=None`; `kwargs` may replace
    the reward, data set or tokenizer and pass anything else the trainer class takes."""
    from testing_utils import toy_trainer

    from trl_soup import SOUPTrainer

    def make(args, model=None, trainer_class=SOUPTrainer, **kwargs):
        model = make_model(seed=0) if model is None else model
        return toy_trainer(trainer_class, model, args, prompt_dataset, tokenizer, **kwargs)

    return make


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """A SOUP relay batch and a GRPOTrainer on the same weights (tests/test_loss.py, test_grpo_options.py,
    test_old_logps_from_loss.py): `(soup, grpo, batch)`, one per module."""
    from testing_utils import RecordingTrainer, build_prompt_dataset, soup_args, toy_trainer
    from trl import GRPOConfig, GRPOTrainer

    from trl_soup.toy import build_tiny_model

    tmp_path = tmp_path_factory.mktemp("loss")
    dataset = build_prompt_dataset()
    # The separate pi_old forward (not the default): the batch holds pi_old for the independent loss checks.
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=3, old_logps_from_loss_forward=False)
    soup = toy_trainer(RecordingTrainer, build_tiny_model(tokenizer, seed=0), args, dataset, tokenizer)
    soup.train()
    grpo_args = GRPOConfig(
        **{
            k: getattr(args, k)
            for k in (
                "output_dir",
                "use_cpu",
                "report_to",
                "per_device_train_batch_size",
                "num_generations",
                "max_completion_length",
                "learning_rate",
                "temperature",
                "seed",
                "epsilon",
                "epsilon_high",
                "loss_type",
                "bf16",
            )
        }
    )
    grpo_model = build_tiny_model(tokenizer, seed=0)
    grpo_model.load_state_dict(soup.model.state_dict())
    grpo = toy_trainer(GRPOTrainer, grpo_model, grpo_args, dataset, tokenizer)
    grpo.current_gradient_accumulation_steps = soup.current_gradient_accumulation_steps  # set by train() on soup
    soup.model.train()
    grpo.model.train()
    batch = soup.records[1]["batch"]  # a relay batch
    assert soup.records[1]["relay"] is not None and int(batch["prefix_mask"].sum()) > 0
    return soup, grpo, batch


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: skipped (with the reason shown by -ra) where there is none, as in CI."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
