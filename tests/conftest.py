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
    from datasets import Dataset

    # Prompts of equal length: no left padding, so an independent forward sees exactly the trainer's positions.
    prompts = [f"{a}+{b}=" for a in range(1, 10) for b in range(1, 10)][:32]
    return Dataset.from_dict({"prompt": prompts})


@pytest.fixture
def make_trainer(tokenizer, make_model, prompt_dataset):
    """Factory for the usual trainer of a test: `make_trainer(args, model=None, trainer_class=SOUPTrainer, **kwargs)`
    is `trainer_class(model=model, reward_funcs=digit_share_reward, args=args, train_dataset=prompt_dataset,
    processing_class=tokenizer, **kwargs)`, with a fresh `make_model(seed=0)` for `model=None`; `kwargs` may replace
    the reward, data set or tokenizer and pass anything else the trainer class takes."""
    from testing_utils import digit_share_reward

    from trl_soup import SOUPTrainer

    def make(args, model=None, trainer_class=SOUPTrainer, **kwargs):
        settings = dict(reward_funcs=digit_share_reward, train_dataset=prompt_dataset, processing_class=tokenizer)
        settings.update(kwargs)
        return trainer_class(model=make_model(seed=0) if model is None else model, args=args, **settings)

    return make


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """A SOUP relay batch and a GRPOTrainer on the same weights (tests/test_loss.py, test_grpo_options.py,
    test_old_logps_from_loss.py): `(soup, grpo, batch)`, one per module."""
    from datasets import Dataset
    from testing_utils import RecordingTrainer, digit_share_reward, soup_args
    from trl import GRPOConfig, GRPOTrainer

    from trl_soup.toy import build_tiny_model

    tmp_path = tmp_path_factory.mktemp("loss")
    prompts = [f"{a}+{b}=" for a in range(1, 10) for b in range(1, 10)][:32]
    dataset = Dataset.from_dict({"prompt": prompts})
    args = soup_args(tmp_path, behavior_refresh_interval=2, max_steps=3)
    soup = RecordingTrainer(
        model=build_tiny_model(tokenizer, seed=0),
        reward_funcs=digit_share_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
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
    grpo = GRPOTrainer(
        model=grpo_model,
        reward_funcs=digit_share_reward,
        args=grpo_args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
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
