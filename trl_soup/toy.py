"""The embedded default: a tiny model, its tokenizer and a synthetic task, all built on the spot.

Nothing here is downloaded. Tests, the demo recipe and the docs use these pieces so that a GRPO / SOUP run on
a CPU shows a clear learning curve in well under a minute.

The task, "copy the digits"::

    prompt      "copy:31415926="      8 random digits between "copy:" and "="
    completion  "31415926" <eos>      the same digits, then end-of-sequence (9 tokens)

Why this task:

- The tokenizer is character-level, so every digit is one token and every prompt has the same length (no
  padding). Completions are 9 tokens long: long enough to be cut into a behavior prefix and an on-policy
  continuation (SOUP, paper Sec. 3.3).
- `char_match_reward` gives dense partial credit (the share of positions holding the right character), so
  group-relative advantages are non-zero from the first step.
- The 8 digits sit at a fixed distance from the answer, which a 2-layer model learns in about 50 supervised
  steps. `warmup_sft` does that and then trains on noisy answers (3 in 4 digits replaced by a random one), so
  the policy knows the task but samples the wrong digit most of the time: reward about 0.3 at temperature
  1. GRPO then sharpens it, and the reward climbs steadily over the 60 steps of `TOY_TRAINING_DEFAULTS`
  (from about 0.3 to about 0.85; the measured numbers are next to that dict).

Public API:

    build_tokenizer()                                -> PreTrainedTokenizerFast (character level, 55 tokens)
    build_tiny_model(tokenizer, *, seed=0, ...)      -> Qwen2ForCausalLM (float32, random init, head_dim 64)
    build_dataset(num_prompts, seed=0)               -> datasets.Dataset with columns "prompt" and "answer"
    char_match_reward(prompts, completions, answer, **kwargs)   dense reward in [0, 1] (TRL signature)
    exact_match_reward(prompts, completions, answer, **kwargs)  1.0 iff the completion is the answer
    warmup_sft(model, tokenizer, dataset, steps=60, ...)        short supervised warm-up, in place
    build_toy_policy(*, seed=0, warmup=True, ...)    -> (model, tokenizer), warmed up
    save_toy_model(output_dir, model=None, tokenizer=None, ...) -> output_dir, loadable by path
    TOY_TRAINING_DEFAULTS                            GRPOConfig keyword arguments tuned for this task

Typical use::

    from trl import GRPOConfig, GRPOTrainer
    from trl_soup import toy

    model, tokenizer = toy.build_toy_policy(seed=0)
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=toy.char_match_reward,
        args=GRPOConfig(output_dir="out", **toy.TOY_TRAINING_DEFAULTS),
        train_dataset=toy.build_dataset(toy.TOY_NUM_PROMPTS, seed=0),
    )
    trainer.train()

Everything is deterministic for fixed seeds and a fixed number of torch threads. Use one thread
(`torch.set_num_threads(1)`): the model is so small that a second thread only adds synchronisation (on a
shared 2-core machine the run below took 46 s with 2 threads against 22 s with 1).
"""

from __future__ import annotations

import random

import torch

from .rewards import completion_text

__all__ = [
    "TOY_NUM_PROMPTS",
    "TOY_TRAINING_DEFAULTS",
    "build_dataset",
    "build_tiny_model",
    "build_tokenizer",
    "build_toy_policy",
    "char_match_reward",
    "exact_match_reward",
    "save_toy_model",
    "warmup_sft",
]

# ---------------------------------------------------------------------------------------------------------------------
# Tuned settings
# ---------------------------------------------------------------------------------------------------------------------

TOY_TRAINING_DEFAULTS: dict = dict(
    # DAPO-style GRPO, as in the paper (Eq. 1): token-level normalisation, clip-higher, no KL term.
    loss_type="dapo",
    epsilon=0.2,
    epsilon_high=0.28,
    beta=0.0,
    # 32 completions per step = 4 prompts x 8 samples.
    num_generations=8,
    per_device_train_batch_size=32,
    # Answers are 9 tokens (8 digits + <eos>); a completion that never stops is cut at 16 and scores <= 0.5.
    max_completion_length=16,
    temperature=1.0,
    # 1e-4 (constant) climbs steadily over all 60 steps; 3e-4 reaches ~0.98 by step 30 and then idles,
    # 1e-3 saturates in ~20 steps, 3e-3 is unstable (reward collapses).
    learning_rate=1e-4,
    lr_scheduler_type="constant",
    max_steps=60,
    logging_steps=1,
    seed=0,
    data_seed=0,
    use_cpu=True,
    bf16=False,
    report_to="none",
    save_strategy="no",
)
"""Keyword arguments for `GRPOConfig` / `SOUPConfig` (add `output_dir`): the settings tuned on the toy task.

Measured with TRL 1.16 `GRPOTrainer` on a policy from `build_toy_policy(seed=s)`, training set
`build_dataset(TOY_NUM_PROMPTS, seed=s)`, these settings with `seed=data_seed=s`, `torch.set_num_threads(1)`
(wall time includes imports, warm-up and training; the per-step reward of seed 0 is reproduced exactly on
re-runs):

    seed   mean reward, steps 1-5   mean reward, steps 56-60
    0      0.259                    0.836
    1      0.312                    0.862
    2      0.287                    0.837

(re-measured 2026-11-24 with this release: seed 0 with `GRPOTrainer`; seeds 1 and 2 with `SOUPTrainer` at T = 1,
plain DAPO, which gave `GRPOTrainer`'s numbers exactly on seed 0. docs/results.md has exact match and pass@k.)
About 11 s per run on a 2-core machine (warm-up 4-6 s, then 60 steps). Mean completion length 8.8-9.0 tokens.
"""

TOY_NUM_PROMPTS = 512
"""Rows of the GRPO training set in the demo (60 steps x 4 prompts = 240 are used)."""

NUM_DIGITS = 8
PROMPT_TEMPLATE = "copy:{digits}="

# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------------

PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN = "<pad>", "<eos>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, UNK_TOKEN)  # ids 0, 1, 2, 3
DIGITS = "0123456789"
CHARACTERS = DIGITS + "abcdefghijklmnopqrstuvwxyz" + " +-*/=<>:,.?!()"  # one token each, ids 4..54


def build_tokenizer(padding_side: str = "left"):
    """A character-level tokenizer over digits, lower-case letters and a few symbols, built on the spot.

    Vocabulary (55 tokens): `<pad>` = 0, `<eos>` = 1, `<bos>` = 2, `<unk>` = 3 (special tokens), then one token
    per character of `CHARACTERS` in that order (digits "0".."9" are ids 4..13, space is 40). No token is
    added automatically (no BOS, no EOS), so `len(input_ids) == len(text)`, and `decode(encode(text)) == text`
    for any text made of these characters, spaces included. Characters outside the vocabulary (upper case,
    newlines, non-ASCII) are dropped when encoding.

    The tokenizer is a `Qwen2Tokenizer` (a `PreTrainedTokenizerFast`: a `tokenizers` byte-level BPE) with
    this vocabulary and no merges, which makes it character-level. The class matters: for a directory whose
    config says `model_type: qwen2`, `AutoTokenizer.from_pretrained` (transformers 5.19) always builds a
    `Qwen2Tokenizer` from `tokenizer.json`, whatever class was saved; a tokenizer of another design (say a
    WordLevel model with a character splitter) would come back with Qwen2's byte-level pipeline and lose
    its spaces. Built this way, the tokenizer loaded by path (by TRL, by a vLLM server) is the same one.

    Args:
        padding_side: "left" (default, what generation wants) or "right".

    Returns:
        A `transformers.PreTrainedTokenizerFast` with `pad_token`, `eos_token`, `bos_token` and `unk_token`
        set. It works with TRL's `GRPOTrainer` for plain-text prompts (pass it as `processing_class`) and
        round-trips through `save_pretrained` / `AutoTokenizer.from_pretrained`.
    """
    from ._compat import Qwen2Tokenizer, bytes_to_unicode

    byte_symbol = bytes_to_unicode()  # the byte-level alphabet: printable ASCII maps to itself, space to "\u0120"
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({byte_symbol[ord(char)]: len(SPECIAL_TOKENS) + i for i, char in enumerate(CHARACTERS)})
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[],  # no merges: every character is its own token
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def build_tiny_model(
    tokenizer,
    *,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 512,
):
    """A randomly initialised float32 `Qwen2ForCausalLM` for CPU tests (0.54 M parameters by default), in train mode.

    The head dimension is `hidden_size // num_attention_heads` (64 by default): vLLM's CPU attention kernel needs a
    head dimension such as 64 (16 fails). The weights depend only on `seed` and the sizes; the global torch RNG is
    forked, so building a model neither reads nor advances it.

    Args:
        tokenizer: gives `vocab_size = len(tokenizer)` and the pad / eos / bos ids of the config and of the
            generation config.
        seed: seed of the random initialisation (same seed and sizes -> identical weights).
        tie_word_embeddings: share the input embedding with the output head (as small Qwen2.5 models do; a vLLM
            disk reload handles such models differently, see design notes Sec. 5).
        hidden_size, num_layers, num_attention_heads, num_key_value_heads, intermediate_size,
            max_position_embeddings: the usual `Qwen2Config` sizes.
    """
    config = _tiny_model_config(
        tokenizer,
        tie_word_embeddings,
        hidden_size,
        num_layers,
        num_attention_heads,
        num_key_value_heads,
        intermediate_size,
        max_position_embeddings,
    )
    return _initialised_model(config, tokenizer, seed)


def _tiny_model_config(
    tokenizer,
    tie_word_embeddings: bool,
    hidden_size: int,
    num_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
):
    """The float32 `Qwen2Config` of `build_tiny_model` (vocabulary size and pad / eos / bos ids from `tokenizer`,
    head dimension `hidden_size // num_attention_heads`, no sliding window)."""
    from transformers import Qwen2Config

    if hidden_size % num_attention_heads:
        raise ValueError(
            f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
        )
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=hidden_size // num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_sliding_window=False,
        dtype="float32",
    )


def _initialised_model(config, tokenizer, seed: int):
    """`Qwen2ForCausalLM(config)` in float32 and train mode, with the pad / eos / bos ids of `tokenizer` in its
    generation config. The weights are drawn after `torch.manual_seed(seed)` inside a fork of the global torch RNG,
    which is neither read nor advanced."""
    from transformers import GenerationConfig, Qwen2ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model.train()
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Task: copy the digits
# ---------------------------------------------------------------------------------------------------------------------


def build_dataset(num_prompts: int, seed: int = 0, *, num_digits: int = NUM_DIGITS):
    """Rows of the "copy the digits" task: `{"prompt": "copy:31415926=", "answer": "31415926"}`.

    The digits are uniform and independent; the rows depend only on `seed` and the arguments (a private
    `random.Random`). All prompts have the same length (`num_digits + 6` tokens), so batches need no padding.
    The "answer" column reaches the reward functions as the keyword argument `answer`.

    Args:
        num_prompts: number of rows.
        seed: seed of the rows. Use different seeds for the warm-up set and the GRPO set.
        num_digits: digits per prompt (8 by default; the tuned settings assume 8).

    Returns:
        A `datasets.Dataset` with string columns "prompt" (plain text, not conversational) and "answer".
    """
    from datasets import Dataset

    rng = random.Random(seed)
    digit_strings = ["".join(rng.choice(DIGITS) for _ in range(num_digits)) for _ in range(num_prompts)]
    return Dataset.from_dict(
        {"prompt": [PROMPT_TEMPLATE.format(digits=d) for d in digit_strings], "answer": digit_strings}
    )


def char_match_score(completion: str, answer: str) -> float:
    """Partial credit in [0, 1]: characters right at their position, over the longer of the two lengths.

        score = #{i : completion[i] == answer[i]} / max(len(answer), len(completion))

    Too short and too long completions both lose credit. A completion that does not stop runs on to
    `max_completion_length`, so stopping with <eos> at the right place is rewarded without a separate term.
    """
    matches = sum(c == a for c, a in zip(completion, answer, strict=False))
    return matches / max(len(answer), len(completion), 1)


def char_match_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """TRL reward function: `char_match_score(completion, answer)` for each completion.

    Signature `reward(prompts, completions, **kwargs) -> list[float]`; `answer` is the dataset column of that
    name. Dense: a random digit string of the right length earns 0.1, the warmed-up policy about 0.3,
    a perfect one 1.0.
    """
    return [char_match_score(completion_text(c), a) for c, a in zip(completions, answer, strict=True)]


def exact_match_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """TRL reward function: 1.0 when the completion is exactly the answer, else 0.0.

    Sparse; useful as an accuracy metric next to `char_match_reward` (give it weight 0 in
    `reward_weights` to log it without training on it).
    """
    return [float(completion_text(c) == a) for c, a in zip(completions, answer, strict=True)]


# ---------------------------------------------------------------------------------------------------------------------
# Supervised warm-up
# ---------------------------------------------------------------------------------------------------------------------


def warmup_sft(
    model,
    tokenizer,
    dataset,
    steps: int = 60,
    *,
    noisy_steps: int = 40,
    label_noise: float = 0.75,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    noisy_learning_rate: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """A short supervised warm-up on the answers (plain torch loop, no TRL), in place; returns the loss of each step.

    Minimises the cross-entropy of `answer + <eos>` given `prompt` (prompt tokens carry no loss) with AdamW (no weight
    decay) on batches of `batch_size` rows drawn with replacement, in two phases, each with a fresh optimizer: `steps`
    steps on clean answers at `learning_rate` (the copy task is learned in about 50 steps: greedy reward 1.0), then
    `noisy_steps` steps at the lower `noisy_learning_rate` on noisy answers (`_noise_answer_digits`: greedy reward
    stays about 1.0, reward at temperature 1 drops to about 0.3). With `noisy_steps=0` this is a plain SFT loop.
    Measured (1 CPU thread, seeds 0-2, defaults, warm-up set `build_dataset(1024, seed=seed + 1)`): 4-6 s; greedy
    reward 0.95-1.0, temperature-1 reward 0.26-0.29 (on 128 held-out prompts).

    Args:
        model, tokenizer: a causal LM (e.g. from `build_tiny_model`; trained in place, left in train mode) and the
            tokenizer it was built with (rows are left-padded here regardless).
        dataset: rows with "prompt" and "answer" (e.g. `build_dataset(1024, seed=1)`).
        steps, noisy_steps, batch_size: optimiser steps on clean answers, then on noisy answers; rows per step.
        label_noise: probability that an answer digit is replaced in the noisy phase.
        learning_rate, noisy_learning_rate: AdamW learning rates of the two phases (a high rate in the noisy phase
            also damages the right answer, not only the confidence in it).
        seed: seed of the batch order and the noise (a private generator; the global RNG is untouched).
    """
    rows = _sft_rows(tokenizer, dataset)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = _sft_phase(model, tokenizer, rows, steps, batch_size, learning_rate, 0.0, generator)
    losses += _sft_phase(model, tokenizer, rows, noisy_steps, batch_size, noisy_learning_rate, label_noise, generator)
    model.zero_grad(set_to_none=True)
    return losses


def _sft_rows(tokenizer, dataset) -> list[tuple[list[int], list[int]]]:
    """`(input_ids, labels)` of each row: `prompt + answer + <eos>` token ids, labels -100 on the prompt tokens."""
    rows = []
    for prompt, answer in zip(dataset["prompt"], dataset["answer"], strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    return rows


def _sft_phase(model, tokenizer, rows, steps, batch_size, learning_rate, label_noise, generator) -> list[float]:
    """`steps` AdamW steps of next-token cross-entropy on `rows` = [(input_ids, labels)], answer digits noised
    (`_noise_answer_digits`) when `label_noise > 0`."""
    if steps <= 0:
        return []
    device = next(model.parameters()).device
    digit_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(DIGITS)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        index = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        width = max(len(rows[i][0]) for i in index)
        input_ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, i in enumerate(index):  # left padding, as at generation time
            ids, row_labels = rows[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            labels[row, width - len(ids) :] = torch.tensor(row_labels)
            attention_mask[row, width - len(ids) :] = 1
        if label_noise > 0:
            input_ids, labels = _noise_answer_digits(input_ids, labels, digit_ids, label_noise, generator)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as `generate` computes them
        loss = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            labels=labels.to(device),
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _noise_answer_digits(input_ids, labels, digit_ids, label_noise, generator):
    """The noise of the warm-up's noisy phase: each answer digit is replaced, with probability `label_noise`, by a
    uniformly random digit, in the labels and in the teacher-forced input; <eos> and the prompt are never corrupted.

    The most likely digit stays the right one (greedy reward stays about 1.0) but sampling flattens towards
    `1 - label_noise + label_noise / 10` on it (0.325 at 0.75): reward at temperature 1 is about 0.3. The result
    mimics a pretrained model that "knows" the answer but samples it unreliably: GRPO has signal at once and room to
    climb, and what it has to do is what RL fine-tuning mostly does to real models (sharpen). Draws one uniform per
    position, then one random digit per position, from `generator`.

    Returns:
        The noisy `(input_ids, labels)`.
    """
    is_answer_digit = torch.isin(labels, digit_ids)  # labels are -100 on the prompt: prompt digits stay
    noisy = is_answer_digit & (torch.rand(labels.shape, generator=generator) < label_noise)
    random_digits = digit_ids[torch.randint(len(digit_ids), labels.shape, generator=generator)]
    return torch.where(noisy, random_digits, input_ids), torch.where(noisy, random_digits, labels)


WARMUP_NUM_PROMPTS = 1024
"""Rows of the warm-up set built by `build_toy_policy` (`build_dataset(WARMUP_NUM_PROMPTS, seed=seed + 1)`)."""


def build_toy_policy(
    *, seed: int = 0, warmup: bool = True, tie_word_embeddings: bool = False, tokenizer=None, **model_kwargs
):
    """The demo's starting policy: `build_tiny_model` warmed up with `warmup_sft` (4-6 s on one CPU thread).

    Args:
        seed: seed of the weights, the warm-up data (`build_dataset(WARMUP_NUM_PROMPTS, seed=seed + 1)`)
            and the warm-up batches.
        warmup: run `warmup_sft` with its defaults (False: the random-init model).
        tie_word_embeddings: see `build_tiny_model`.
        tokenizer: reuse a tokenizer from `build_tokenizer` (default: build one).
        **model_kwargs: further sizes for `build_tiny_model` (the tuned settings assume the defaults).

    Returns:
        `(model, tokenizer)`, the model in train mode.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, tie_word_embeddings=tie_word_embeddings, **model_kwargs)
    if warmup:
        warmup_sft(model, tokenizer, build_dataset(WARMUP_NUM_PROMPTS, seed=seed + 1), seed=seed)
    return model, tokenizer


def save_toy_model(output_dir, model=None, tokenizer=None, **policy_kwargs) -> str:
    """Write a toy model and its tokenizer to `output_dir` with `save_pretrained`, so both load by path.

    `AutoModelForCausalLM.from_pretrained(output_dir)` and `AutoTokenizer.from_pretrained(output_dir)` then
    rebuild them (TRL trainers also accept the path string as `model`; pass the tokenizer as
    `processing_class` or let TRL load it from the same path). The config, generation config (pad / eos /
    bos ids), safetensors weights and `tokenizer.json` are written.

    Args:
        output_dir: directory to write (created if missing).
        model: the model to save; default: `build_toy_policy(**policy_kwargs)` (warmed up).
        tokenizer: its tokenizer; default: the one `build_toy_policy` built, else `build_tokenizer()`.
        **policy_kwargs: passed to `build_toy_policy` when `model` is None (`seed`, `warmup`,
            `tie_word_embeddings`, model sizes).

    Returns:
        `output_dir` as a string.
    """
    import os

    if model is None:
        model, tokenizer = build_toy_policy(tokenizer=tokenizer, **policy_kwargs)
    elif policy_kwargs:
        raise ValueError(f"save_toy_model: {sorted(policy_kwargs)} only apply when `model` is None")
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
