"""When the behavior copy is refreshed: a fixed interval T (the paper), or a policy (paper Sec. 4.3: "an important
future direction is to develop an automatic mechanism for adaptively setting T").

A policy is a function ``policy(stats: RefreshStats, args) -> bool`` ("refresh before the next generation batch"),
registered with :func:`register_refresh_policy` and selected with ``SOUPConfig.behavior_refresh_policy``. Whatever a
policy says, the copy is refreshed at the first batch of training, never sooner than ``behavior_refresh_min_interval``
batches after a refresh and never later than ``behavior_refresh_interval`` (T) batches after it. Built in:

- ``"fixed"`` (default): never asks; the copy is refreshed every T batches, as in the paper.
- ``"adaptive"``: asks once the staleness of the last relay batch exceeds ``behavior_max_staleness``; the staleness
  is the mean over its prefix tokens of :func:`trl_soup.core.behavior_kl_estimate`, an unbiased estimate of
  KL(pi_behavior || pi_theta) per token (docs/equations.md).

The statistics are sums all-reduced over processes, so every rank takes the same decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._registry import Registry

__all__ = [
    "REFRESH_REASONS",
    "RefreshSchedule",
    "RefreshStats",
    "available_refresh_policies",
    "register_refresh_policy",
]

# Why a generation batch refreshed the copy ("none": it did not). Each reason is logged as its own 0/1 metric,
# soup/refresh/<reason>, so that an average over logging steps or ranks is a fraction of batches, not a mixed code.
REFRESH_REASONS = ("start", "interval", "policy")


@dataclass
class RefreshStats:
    """What a refresh policy sees before each generation batch.

    Attributes:
        batches_since_refresh: generation batches produced since the last refresh (1 right after a refreshed one).
        staleness: mean KL(pi_behavior || pi_theta) estimate per prefix token of the last relay batch (None before
            the first relay batch of the window).
        prefix_log_ratio_abs_mean: mean |log pi_theta - log pi_behavior| over those prefix tokens (None likewise).
        prefix_clip_ratio: share of those prefix tokens where the clip of Eq. 1 was active (None likewise).
    """

    batches_since_refresh: int
    staleness: float | None = None
    prefix_log_ratio_abs_mean: float | None = None
    prefix_clip_ratio: float | None = None


RefreshPolicy = Callable[[RefreshStats, object], bool]
_REGISTRY = Registry("refresh policy", "behavior_refresh_policy", "trl_soup.register_refresh_policy")


def register_refresh_policy(name: str, fn: RefreshPolicy | None = None, *, overwrite: bool = False):
    """Register ``fn(stats, args) -> bool`` under ``name``; usable as a decorator."""
    return _REGISTRY.register(name, fn, overwrite=overwrite)


def available_refresh_policies() -> list[str]:
    """Names accepted by ``SOUPConfig.behavior_refresh_policy``."""
    return _REGISTRY.names()


@register_refresh_policy("fixed")
def _fixed(stats: RefreshStats, args) -> bool:
    return False  # the interval T alone decides


@register_refresh_policy("adaptive")
def _adaptive(stats: RefreshStats, args) -> bool:
    return stats.staleness is not None and stats.staleness > args.behavior_max_staleness


@dataclass
class RefreshSchedule:
    """The refresh decisions of a run, and the state a checkpoint needs to take the same ones after a resume.

    The loss forwards of a generation batch add their prefix sums (all-reduced over processes) with :meth:`add`;
    the next decision uses the sums of the last generation batch that had prefix tokens.

    Attributes:
        last_refresh: generation batch index of the last refresh (None before the first one).
        pending: ``[prefix tokens, KL estimate sum, |log r| sum, clipped tokens]`` of the batch being optimised.
        last: the same sums of the last relay batch of the window, read by :meth:`stats`.
    """

    last_refresh: int | None = None
    pending: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    last: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def add(self, prefix_tokens: float, kl_sum: float, log_ratio_abs_sum: float, clipped_sum: float) -> None:
        """Prefix sums of one loss forward (all-reduced over processes)."""
        self.pending = tuple(
            a + b for a, b in zip(self.pending, (prefix_tokens, kl_sum, log_ratio_abs_sum, clipped_sum), strict=True)
        )

    def _commit(self) -> None:
        if self.pending[0] > 0:
            self.last = self.pending
        self.pending = (0.0, 0.0, 0.0, 0.0)

    def stats(self, index: int) -> RefreshStats:
        """The statistics a policy sees before generation batch ``index``."""
        since = index - self.last_refresh if self.last_refresh is not None else 0
        tokens, kl, log_ratio, clipped = self.last
        if tokens <= 0:
            return RefreshStats(since)
        return RefreshStats(since, kl / tokens, log_ratio / tokens, clipped / tokens)

    def decide(self, index: int, args) -> str:
        """Whether generation batch ``index`` refreshes the copy first: one of :data:`REFRESH_REASONS`, or "none".
        Call once per generation batch, before it is generated; on a refresh, call :meth:`refreshed`."""
        self._commit()
        if self.last_refresh is None:
            return "start"
        since = index - self.last_refresh
        if since >= args.behavior_refresh_interval:
            return "interval"
        if since < args.behavior_refresh_min_interval:
            return "none"
        decision = _REGISTRY.get(args.behavior_refresh_policy)(self.stats(index), args)
        if type(decision).__name__ not in ("bool", "bool_"):  # Python's or numpy's: a string would be taken as True
            raise TypeError(
                f"The refresh policy {args.behavior_refresh_policy!r} returned {decision!r} "
                f"({type(decision).__name__}): a refresh policy returns True (refresh now) or False."
            )
        return "policy" if decision else "none"

    def refreshed(self, index: int) -> None:
        self.last_refresh = index
        self.pending = self.last = (0.0, 0.0, 0.0, 0.0)

    def window_end(self, refresh_interval: int) -> int | None:
        """The generation batch index at which the current window ends at the latest: ``last_refresh + T``."""
        return None if self.last_refresh is None else self.last_refresh + refresh_interval

    def state_dict(self) -> dict:
        return {"last_refresh": self.last_refresh, "pending": list(self.pending), "last": list(self.last)}

    @classmethod
    def from_state_dict(cls, state: dict) -> RefreshSchedule:
        return cls(state["last_refresh"], tuple(state["pending"]), tuple(state["last"]))
