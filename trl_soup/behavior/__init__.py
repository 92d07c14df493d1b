"""The behavior policy (the frozen historical copy of the learner): one small interface, several backends.

A backend refreshes itself from the learner and samples full responses with their exact per-token log-probs and
entropies. Backends are registered by name and selected with ``SOUPConfig.behavior_backend``; each is built from a
:class:`BehaviorContext` (the handles it may use), never from the trainer.
"""

from __future__ import annotations

from .base import BehaviorBackend, BehaviorSamples, Scorer
from .context import BehaviorContext, SamplingSettings, ScoreFunction, as_context
from .local import LocalBehaviorBackend
from .pool import BehaviorPool
from .vllm_server import VLLMServerBehaviorBackend

_BACKENDS: dict[str, type[BehaviorBackend]] = {"local": LocalBehaviorBackend, "vllm_server": VLLMServerBehaviorBackend}


def available_behavior_backends() -> list[str]:
    return sorted(_BACKENDS)


def build_behavior_backend(name: str, context, pool_size: int = 1) -> BehaviorBackend:
    """The behavior backend ``name`` built from ``context``; with ``pool_size`` > 1 a :class:`BehaviorPool` of that
    many members of it. ``context``: a :class:`BehaviorContext`, or a trainer (how it was called up to 0.2), converted
    with :meth:`BehaviorContext.from_trainer`."""
    context = as_context(context)
    try:
        backend_cls = _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"Unknown behavior_backend {name!r}. Available backends: {available_behavior_backends()}."
        ) from None
    if pool_size == 1:
        return backend_cls(context)
    return BehaviorPool(context, [backend_cls(context, member=slot) for slot in range(pool_size)])


__all__ = [
    "BehaviorBackend",
    "BehaviorContext",
    "BehaviorPool",
    "BehaviorSamples",
    "LocalBehaviorBackend",
    "SamplingSettings",
    "ScoreFunction",
    "Scorer",
    "VLLMServerBehaviorBackend",
    "available_behavior_backends",
    "build_behavior_backend",
]
