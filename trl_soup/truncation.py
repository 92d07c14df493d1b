"""Registry of prefix (truncation) strategies (paper Sec. 3.3: the strategy is meant to be pluggable).

A strategy decides how much of each behavior response is kept as prefix. It is a function

    strategy(completion_ids, logps, entropies, mask, generator, args) -> prefix_lengths

of the behavior responses (``(B, C)`` token ids, log-probs, entropies, a ``(B, C)`` mask of valid tokens), a
``torch.Generator`` for any randomness, and the ``SOUPConfig`` (so a strategy can read its own fields), returning a
``(B,)`` integer tensor of prefix lengths in ``[0, number of valid tokens]``.

Register your own with the decorator and select it with ``SOUPConfig(prefix_strategy="name")``::

    from trl_soup import register_prefix_strategy

    @register_prefix_strategy("first_quarter")
    def first_quarter(completion_ids, logps, entropies, mask, generator, args):
        return mask.sum(1) // 4
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._registry import Registry
from .core import truncate_by_entropy, truncate_by_ratio

PrefixStrategy = Callable[..., torch.Tensor]

_STRATEGIES = Registry("prefix strategy", "prefix_strategy", "trl_soup.register_prefix_strategy")
_PREFIX_STRATEGIES: dict[str, PrefixStrategy] = _STRATEGIES.entries
# Strategies that decode only what they keep: name -> function of the config giving the behavior's token budget.
_DECODE_BUDGETS: dict[str, Callable] = {}


def register_prefix_strategy(
    name: str, fn: PrefixStrategy | None = None, *, overwrite: bool = False, decode_budget: Callable | None = None
):
    """Register ``fn`` under ``name``; usable as ``register_prefix_strategy("name")(fn)`` or as a decorator.

    ``decode_budget(args) -> int``, if given, caps how many tokens the behavior policy decodes for this strategy (the
    default is a full response of ``max_completion_length`` tokens).
    """

    def remember_budget(registered: str) -> None:
        _DECODE_BUDGETS.pop(registered, None)
        if decode_budget is not None:
            _DECODE_BUDGETS[registered] = decode_budget

    return _STRATEGIES.register(name, fn, overwrite=overwrite, on_register=remember_budget)


def available_prefix_strategies() -> list[str]:
    """Names accepted by ``SOUPConfig.prefix_strategy``."""
    return _STRATEGIES.names()


def get_prefix_strategy(name: str) -> PrefixStrategy:
    """The strategy registered under ``name``; unknown names fail with the list of known ones."""
    return _STRATEGIES.get(name)


def behavior_decode_budget(name: str, args) -> int:
    """How many tokens the behavior policy decodes for strategy ``name``: a full response unless it says less."""
    budget = _DECODE_BUDGETS.get(name)
    return args.max_completion_length if budget is None else int(budget(args))


def compute_prefix_lengths(name, completion_ids, logps, entropies, mask, generator, args) -> torch.Tensor:
    """Run the strategy ``name`` and check its output (shape, dtype, range) with a clear error."""
    lengths = get_prefix_strategy(name)(completion_ids, logps, entropies, mask, generator, args)
    lengths = torch.as_tensor(lengths)
    valid = mask.sum(dim=1).to(lengths.device)
    if lengths.shape != valid.shape:
        raise ValueError(
            f"prefix strategy {name!r} returned shape {tuple(lengths.shape)}; expected one prefix length per "
            f"response, shape {tuple(valid.shape)}."
        )
    if lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"prefix strategy {name!r} must return integer prefix lengths, got dtype {lengths.dtype}.")
    lengths = lengths.to(torch.long)
    if bool((lengths < 0).any()) or bool((lengths > valid).any()):
        raise ValueError(
            f"prefix strategy {name!r} returned prefix lengths {lengths.tolist()} outside [0, response length] "
            f"with response lengths {valid.tolist()}."
        )
    return lengths


@register_prefix_strategy("ratio")
def _ratio_strategy(completion_ids, logps, entropies, mask, generator, args):
    # Paper Sec. 3.3: keep the first round-half-up(len * prefix_ratio) tokens.
    return truncate_by_ratio(mask.sum(dim=1), args.prefix_ratio)


@register_prefix_strategy("entropy")
def _entropy_strategy(completion_ids, logps, entropies, mask, generator, args):
    # Paper Sec. 3.3: cut before a token drawn uniformly among the top-k entropy positions.
    return truncate_by_entropy(entropies, mask, args.prefix_entropy_top_k, generator)


def _fixed_budget(args) -> int:
    # prefix_budget tokens, or round-half-up(prefix_ratio * max_completion_length)
    if args.prefix_budget is not None:
        return args.prefix_budget
    return int(truncate_by_ratio(torch.tensor([args.max_completion_length]), args.prefix_ratio)[0])


@register_prefix_strategy("fixed_budget", decode_budget=_fixed_budget)
def _fixed_budget_strategy(completion_ids, logps, entropies, mask, generator, args):
    # Paper Appendix C: the behavior decodes only the prefix it keeps, so all of it is kept.
    return mask.sum(dim=1)
