"""Where relay prefixes come from (``prefix_source``): the historical copy of the paper, or a source outside the run.

The paper's Limitations ask for "heterogeneous policy sources": SOUP's token-level ratio (Eq. 5) applies to any
prefix whose token log-probs are known, so a prefix may be cut from an offline trajectory or a teacher's response,
and the continuation stays on-policy. Built-in sources:

- ``"behavior"`` (default): the frozen historical copy (with ``behavior_pool_size`` and the refresh policy);
- ``"dataset"``: a per-prompt reference completion in the dataset column ``prefix_dataset_column`` (text, token ids,
  or assistant messages); denominators from ``prefix_logps_column`` or a frozen scorer (docs/equations.md, "Prefixes
  from outside the run", for the bias this brings);
- ``"teacher"``: a second model served by its own vLLM server (``prefix_teacher_base_url``), never refreshed;
- ``"on_policy"``: no prefix (the current policy writes the whole row), for mixing.

``prefix_source_weights`` draws each row's source among several. A source is a
:class:`trl_soup.behavior.base.BehaviorBackend` built by a factory ``factory(trainer) -> backend`` registered with
:func:`register_prefix_source`; its ``sample`` gets the batch's dataset rows (``rows``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._registry import Registry

__all__ = [
    "available_prefix_sources",
    "choose_sources",
    "reference_row_logps",
    "reference_token_ids",
    "register_prefix_source",
    "source_names",
    "source_weights",
]

_REGISTRY = Registry("prefix source", "prefix_source", "trl_soup.register_prefix_source")  # users' sources only
BUILTIN_SOURCES = ("behavior", "dataset", "on_policy", "teacher")  # built by trl_soup.behavior.sources


def register_prefix_source(name: str, factory: Callable | None = None, *, overwrite: bool = False):
    """Register ``factory(trainer) -> BehaviorBackend`` under ``name`` (usable as a decorator). The backend's
    ``sample(prompt_ids, max_new_tokens, generation_batch_index, stream, rows)`` returns one response per row with its
    log-probs (the prefix denominators) and entropies; it is never refreshed unless its ``refresh`` does something."""
    if name in BUILTIN_SOURCES:
        raise ValueError(f"{name!r} is a built-in prefix source and cannot be replaced.")
    return _REGISTRY.register(name, factory, overwrite=overwrite)


def available_prefix_sources() -> list[str]:
    """Names accepted by ``SOUPConfig.prefix_source`` and as keys of ``prefix_source_weights``."""
    return sorted({*BUILTIN_SOURCES, *_REGISTRY.names()})


def registered_source_factory(name: str) -> Callable:
    """The factory a user registered under ``name`` (not a built-in: those are built by the behavior package)."""
    return _REGISTRY.get(name)


def source_weights(args) -> dict[str, float]:
    """Each source's share of relay rows: ``prefix_source_weights`` normalised (zero weights dropped), or
    ``{prefix_source: 1.0}``."""
    weights = getattr(args, "prefix_source_weights", None)
    if not weights:
        return {args.prefix_source: 1.0}
    total = float(sum(weights.values()))
    return {name: float(w) / total for name, w in sorted(weights.items()) if w > 0}


def source_names(args) -> list[str]:
    """The sources a run draws rows from, in the order of the ``prefix_source_id`` batch key."""
    return list(source_weights(args))


def choose_sources(weights: list[float], num_rows: int, generator: torch.Generator) -> list[int]:
    """Each row's source, an index into ``weights``, drawn independently with those probabilities."""
    if len(weights) == 1:
        return [0] * num_rows
    probabilities = torch.tensor(weights, dtype=torch.float64)
    return torch.multinomial(probabilities, num_rows, replacement=True, generator=generator).tolist()


def reference_token_ids(value, tokenizer, eos_token_id: int, column: str) -> list[int] | None:
    """The token ids of one row's reference completion, or None when the row has none (None, "", []).

    - a list of ints: the ids as they are (ids stay ids end to end);
    - a string: tokenised without special tokens, followed by EOS (a reference is a complete response);
    - a list of chat messages: the ``content`` of its assistant messages, joined, then as a string.
    """
    if value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0):
        return None
    if isinstance(value, str):
        return list(tokenizer(value, add_special_tokens=False)["input_ids"]) + [eos_token_id]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        vocabulary = len(tokenizer)
        outside = [v for v in value if not 0 <= v < vocabulary]
        if outside:
            raise ValueError(
                f"prefix_dataset_column={column!r} holds token id {outside[0]}, outside the tokenizer's vocabulary "
                f"(ids 0 to {vocabulary - 1}): token-id references must come from this model's tokenizer."
            )
        return list(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, dict) for v in value):
        text = "".join(str(m.get("content", "")) for m in value if m.get("role") == "assistant")
        return reference_token_ids(text, tokenizer, eos_token_id, column) if text else None
    raise TypeError(
        f"prefix_dataset_column={column!r} holds a {type(value).__name__} ({str(value)[:60]!r}): a reference "
        "completion must be a string, a list of token ids, or a list of chat messages."
    )


def reference_row_logps(value, num_tokens: int, column: str) -> list[float]:
    """One row's per-token log-probs from ``prefix_logps_column``, checked against its reference's length."""
    if not isinstance(value, (list, tuple)) or len(value) != num_tokens:
        got = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
        raise ValueError(
            f"prefix_logps_column={column!r} must hold one log-prob per token of the reference completion: a row "
            f"has {got} for {num_tokens} tokens (its reference must then be token ids, sampled by the model whose "
            "log-probs these are)."
        )
    logps = [float(v) for v in value]
    if any(not logp <= 0.0 for logp in logps):  # NaN too
        bad = next(logp for logp in logps if not logp <= 0.0)
        raise ValueError(
            f"prefix_logps_column={column!r} holds {bad}: log-probabilities are <= 0 (natural log of a probability; "
            "a positive value is a logit or a probability's negative log)."
        )
    return logps
