"""Which snapshot of the behavior pool writes each relay row (the paper's Limitations: "dynamically selecting
off-policy checkpoints").

With ``behavior_pool_size`` K > 1, each refresh pushes the learner's weights into a pool holding the K most recent
snapshots (the oldest is overwritten), and each row of a relay batch takes its prefix from one member. A pool
sampling rule is a function ``rule(num_rows, ages, generator) -> member index per row``, registered with
:func:`register_pool_sampling` and selected with ``SOUPConfig.behavior_pool_sampling``:

- ``ages``: the members' ages in generation batches (batches since each snapshot was taken), newest first, so
  ``ages[0]`` is the youngest; only members that hold a snapshot are listed (fewer than K early in training);
- ``generator``: a ``torch.Generator`` seeded per (run seed, generation batch, rank), so the choice does not depend on
  when the batch is sampled (prefetching, resuming);
- the result: ``num_rows`` integers in ``[0, len(ages))``, an index into ``ages`` (0 = the newest member).

Built in: ``"newest"`` (every row from the newest snapshot: the paper's single historical copy), ``"uniform"``
(each row from a member drawn uniformly), ``"oldest"`` (every row from the oldest snapshot held).

Each row's prefix denominators are the log-probs of the member that wrote it (docs/equations.md, "Pool"), so the
importance ratio of Eq. 5 stays exact row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._registry import Registry

__all__ = [
    "available_pool_samplings",
    "choose_pool_members",
    "pool_age_order",
    "pool_victim",
    "register_pool_sampling",
]

PoolSampling = Callable[[int, list[int], torch.Generator], Sequence[int]]
_REGISTRY = Registry("pool sampling rule", "behavior_pool_sampling", "trl_soup.register_pool_sampling")


def register_pool_sampling(name: str, fn: PoolSampling | None = None, *, overwrite: bool = False):
    """Register ``fn(num_rows, ages, generator) -> member index per row`` under ``name``; usable as a decorator."""
    return _REGISTRY.register(name, fn, overwrite=overwrite)


def available_pool_samplings() -> list[str]:
    """Names accepted by ``SOUPConfig.behavior_pool_sampling``."""
    return _REGISTRY.names()


@register_pool_sampling("newest")
def _newest(num_rows: int, ages: list[int], generator: torch.Generator) -> list[int]:
    return [0] * num_rows


@register_pool_sampling("oldest")
def _oldest(num_rows: int, ages: list[int], generator: torch.Generator) -> list[int]:
    return [len(ages) - 1] * num_rows


@register_pool_sampling("uniform")
def _uniform(num_rows: int, ages: list[int], generator: torch.Generator) -> list[int]:
    return torch.randint(0, len(ages), (num_rows,), generator=generator).tolist()


def pool_age_order(births: Sequence[int | None]) -> list[int]:
    """The slots holding a snapshot, newest first (``births[slot]``: generation batch index of the slot's last
    refresh, None while empty). Ties cannot happen: one slot is refreshed per refresh."""
    filled = [slot for slot, birth in enumerate(births) if birth is not None]
    return sorted(filled, key=lambda slot: births[slot], reverse=True)


def pool_victim(births: Sequence[int | None]) -> int:
    """The slot the next refresh overwrites: the first empty one, else the one holding the oldest snapshot."""
    for slot, birth in enumerate(births):
        if birth is None:
            return slot
    return min(range(len(births)), key=lambda slot: births[slot])


def choose_pool_members(
    name: str, num_rows: int, births: Sequence[int | None], index: int, generator: torch.Generator
) -> list[int]:
    """The age rank (0 = newest) of the member that writes each of ``num_rows`` rows of generation batch ``index``,
    by the rule registered as ``name``; a rule that returns anything else fails here, naming it."""
    order = pool_age_order(births)
    if not order:
        raise RuntimeError("The behavior pool holds no snapshot yet: it is filled by the first refresh.")
    ages = [index - births[slot] for slot in order]
    ranks = list(_REGISTRY.get(name)(num_rows, ages, generator))
    if len(ranks) != num_rows or not all(
        isinstance(r, int) and not isinstance(r, bool) and 0 <= r < len(ages) for r in ranks
    ):
        raise ValueError(
            f"behavior_pool_sampling={name!r} returned {ranks[:8]!r}{' ...' if len(ranks) > 8 else ''}: it must "
            f"return {num_rows} integers in [0, {len(ages)}) (indices into the ages, newest first)."
        )
    return ranks
