"""What SOUPTrainer hands to loggers and model cards: SOUP's paper entry, metrics without empty values, and the
prefix columns of the completions table."""

from __future__ import annotations

import math
import os

__all__ = ["SOUP_PAPER", "describe_local_base_model", "drop_empty_metrics", "prefix_columns"]

SOUP_PAPER = {
    "title": "SOUP: Token-level Single-sample Mix-policy Reinforcement Learning for Large Language Models",
    "id": "2601.21476",
    "citation": "\n".join(
        [
            "@article{yang2026soup,",
            "    title        = {{SOUP: Token-level Single-sample Mix-policy Reinforcement Learning for Large "
            "Language Models}},",
            "    author       = {Lei Yang and Wei Bi and Chenxi Sun and Renren Jin and Deyi Xiong},",
            "    year         = 2026,",
            "    eprint       = {arXiv:2601.21476},",
            "}",
        ]
    ),
}


def drop_empty_metrics(metrics: dict[str, list[float]]) -> list[str]:
    """Remove (in place) the metrics whose values since the last log are all NaN.

    TRL averages each metric over the values that are not NaN and hands None to the loggers when none is left
    (transformers then warns "attempting to log a value of None" once per metric). SOUP logs NaN for what a batch
    does not have (prefix statistics on on-policy batches, empty position bins, a segment without tokens), so those
    metrics are left out of that log instead. Returns the names removed.
    """
    empty = [name for name, values in metrics.items() if all(math.isnan(v) for v in values)]
    for name in empty:
        del metrics[name]
    return empty


def prefix_columns(completion_ids: list[list[int]], prefix_lengths: list[int], decode) -> dict[str, list]:
    """Columns of the completions table (``log_completions=True``) that show where the behavior prefix ends:
    ``behavior_prefix`` (its text; empty on on-policy rows) and ``behavior_prefix_tokens`` (its length)."""
    return {
        "behavior_prefix": [
            decode(ids[:k]) if k > 0 else "" for ids, k in zip(completion_ids, prefix_lengths, strict=True)
        ],
        "behavior_prefix_tokens": [int(k) for k in prefix_lengths],
    }


def describe_local_base_model(card_path: str, model_name_or_path: str | None) -> None:
    """TRL's model card links the base model on the Hub; for a local base model it has no name and writes a link to
    ``huggingface.co/None``. Replace that link by the local folder's name."""
    if not model_name_or_path or not os.path.exists(card_path):
        return
    with open(card_path, encoding="utf-8") as f:
        card = f.read()
    name = os.path.basename(os.path.normpath(model_name_or_path))
    fixed = card.replace("[None](https://huggingface.co/None)", f"a local model (`{name}`, not on the Hub)")
    if fixed != card:
        with open(card_path, "w", encoding="utf-8") as f:
            f.write(fixed)
