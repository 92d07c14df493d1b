"""The behavior policy (the frozen historical copy of the learner): one small interface, several backends.

A backend refreshes itself from the learner and samples full responses with their exact per-token log-probs and
entropies. Backends are registered by name and selected with ``SOUPConfig.behavior_backend``.
"""

from __future__ import annotations

from .base import BehaviorBackend, BehaviorSamples
from .local import LocalBehaviorBackend
from .pool import BehaviorPool
from .vllm_server import VLLMServerBehaviorBackend

_BACKENDS: dict[str, type[BehaviorBackend]] = {"local": LocalBehaviorBackend, "vllm_server": VLLMServerBehaviorBackend}


def available_behavior_backends() -> list[str]:
    return sorted(_BACKENDS)


def build_behavior_backend(name: str, trainer, pool_size: int = 1) -> BehaviorBackend:
    """The behavior backend ``name`` of ``trainer``; with ``pool_size`` > 1 a :class:`BehaviorPool` of that many
    members of it."""
    try:
        backend_cls = _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"Unknown behavior_backend {name!r}. Available backends: {available_behavior_backends()}."
        ) from None
    if pool_size == 1:
        return backend_cls(trainer)
    return BehaviorPool(trainer, [backend_cls(trainer, member=slot) for slot in range(pool_size)])


__all__ = [
    "BehaviorBackend",
    "BehaviorPool",
    "BehaviorSamples",
    "LocalBehaviorBackend",
    "VLLMServerBehaviorBackend",
    "available_behavior_backends",
    "build_behavior_backend",
]
