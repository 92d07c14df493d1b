"""Shared fixtures: a tiny local model, tokenizer and prompt set (nothing is downloaded)."""

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


def digit_share_reward(prompts, completions, **kwargs):
    """A cheap dense reward with spread even for a random model: the share of digits in the completion."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def soup_args(tmp_path, **overrides):
    from trl_soup import SOUPConfig

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=10,
        learning_rate=5e-3,
        temperature=0.8,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        data_seed=0,
        bf16=False,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return SOUPConfig(**defaults)


def reference_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature):
    """Independent scoring: a plain forward, temperature-scaled log-softmax, gathered at the completion tokens."""
    with torch.no_grad():
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        logits = logits[:, prompt_ids.size(1) - 1 : -1] / temperature
        logps = torch.log_softmax(logits, dim=-1)
        per_token = logps.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        probs = logps.exp()
        entropy = -(probs * logps).sum(-1)
    return per_token, entropy


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: skipped (with the reason shown by -ra) where there is none, as in CI."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
