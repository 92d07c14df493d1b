"""Math answer checking with math-verify, shared by the training recipes (reward) and the evaluation (pass@k).

The paper rewards a response 1 if its final answer is mathematically equal to the reference and 0 otherwise
(Sec. 4, rule-based verifier). ``math_verify`` extracts the answer (``\\boxed{...}`` first, then other LaTeX or plain
expressions) and compares it symbolically, so ``\\frac{2}{6}`` matches ``\\frac{1}{3}``.

Install with ``pip install "trl-soup[math]"``.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["completion_text", "math_accuracy_reward", "math_is_correct"]


def _math_verify():
    try:
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig, parse, verify
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('The math reward needs math-verify: pip install "trl-soup[math]"') from error
    return NormalizationConfig, LatexExtractionConfig, parse, verify


def completion_text(completion) -> str:
    """The text of a completion, standard (a string) or conversational (a list of messages, the last one answered)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"A completion must be a string or a list of messages, got {type(completion).__name__}.")


def math_is_correct(response: str, gold: str) -> bool | None:
    """Whether the final answer of ``response`` equals ``gold`` (math-verify); None if ``gold`` cannot be parsed.

    The reference is parsed as written (plain ``34`` or LaTeX ``\\frac{1}{3}``); the response's answer is extracted
    with ``\\boxed{}`` taking priority, as in the paper's verifier.
    """
    NormalizationConfig, LatexExtractionConfig, parse, verify = _math_verify()
    # math-verify's timeouts use signal.alarm, which only works in the main thread.
    main_thread = threading.current_thread() is threading.main_thread()
    timeout = 5 if main_thread else None
    if not main_thread:
        logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold_parsed = parse(gold if "$" in gold or "\\boxed" in gold else f"${gold}$", parsing_timeout=timeout)
    if not gold_parsed:
        gold_parsed = parse(gold, parsing_timeout=timeout)
    if not gold_parsed:
        return None
    extraction = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(units=True),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        ),
    ]
    answer = parse(response, extraction_config=extraction, extraction_mode="first_match", parsing_timeout=timeout)
    if not answer:  # no LaTeX answer: fall back to math-verify's default extraction (plain numbers, "answer: x")
        answer = parse(response, extraction_mode="first_match", parsing_timeout=timeout)
    return bool(verify(gold_parsed, answer, timeout_seconds=timeout))


def math_accuracy_reward(completions, solution, **kwargs) -> list[float | None]:
    """TRL reward function: 1.0 when the completion's final answer equals ``solution``, 0.0 otherwise.

    Works for standard and conversational datasets; the dataset needs a ``solution`` column (the recipes map each
    data set's answer column onto it). A reference math-verify cannot parse gives None (TRL skips that reward).
    """
    rewards: list[float | None] = []
    for completion, gold in zip(completions, solution, strict=True):
        correct = math_is_correct(completion_text(completion), str(gold))
        rewards.append(None if correct is None else float(correct))
    return rewards
