"""SOUP's checkpoint state: the refresh counter, the truncation RNG and (mid-window) the behavior snapshot.

Files inside a checkpoint folder, next to transformers' own:

- ``soup_state.pt`` (main process): :class:`SOUPState` as a dict;
- ``soup_rng_state_<rank>.pt`` (every rank): the state of the rank's truncation generator;
- ``behavior_snapshot/``: the behavior backend's snapshot, written only mid-window (at a window boundary the next
  batch refreshes it anyway); with a pool (``behavior_pool_size`` > 1) every member the resumed run samples from,
  by slot (``member-<slot>/``), and ``soup_pool.json`` (:meth:`trl_soup.behavior.base.BehaviorBackend.
  checkpoint_snapshot`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

from .refresh import RefreshSchedule

SOUP_STATE_FILE = "soup_state.pt"
SNAPSHOT_DIR = "behavior_snapshot"

__all__ = ["SNAPSHOT_DIR", "SOUP_STATE_FILE", "SOUPState", "load_rng_state", "rng_state_path", "save_rng_state"]


@dataclass
class SOUPState:
    """What a resumed run needs besides the model, optimizer and transformers' trainer state.

    Attributes:
        generation_batch_index: generation batches produced so far (the refresh counter).
        behavior_refresh_interval: T of the run that saved it (a resume must use the same T).
        behavior_snapshot: whether the checkpoint holds the behavior snapshot (saved mid-window, or a pool's members).
        refresh_schedule: :meth:`trl_soup.refresh.RefreshSchedule.state_dict` (None in checkpoints of 0.1, whose
            refreshes were every T batches: :meth:`schedule` rebuilds it).
        behavior_pool_size: K of the run that saved it (a resume must use the same K; None in checkpoints of 0.2).
    """

    generation_batch_index: int
    behavior_refresh_interval: int
    behavior_snapshot: bool
    refresh_schedule: dict | None = None
    behavior_pool_size: int | None = None

    def schedule(self) -> RefreshSchedule:
        """The refresh schedule to resume with."""
        if self.refresh_schedule is not None:
            return RefreshSchedule.from_state_dict(self.refresh_schedule)
        index, T = self.generation_batch_index, self.behavior_refresh_interval
        return RefreshSchedule(last_refresh=(index - 1) // T * T if index > 0 else None)

    def save(self, checkpoint: str) -> None:
        torch.save(asdict(self), os.path.join(checkpoint, SOUP_STATE_FILE))

    @classmethod
    def load(cls, checkpoint: str, behavior_refresh_interval: int, behavior_pool_size: int = 1) -> SOUPState:
        """Read the state of ``checkpoint``; refuse a missing file, a different T or a different K with a clear
        error."""
        path = os.path.join(checkpoint, SOUP_STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by SOUPTrainer, so the behavior snapshot and the "
                "refresh counter cannot be restored."
            )
        state = cls(**torch.load(path, map_location="cpu", weights_only=True))
        if state.behavior_refresh_interval != behavior_refresh_interval:
            raise ValueError(
                f"The checkpoint was trained with behavior_refresh_interval={state.behavior_refresh_interval}, "
                f"this run uses {behavior_refresh_interval}; resume with the same value."
            )
        if state.behavior_pool_size is not None and state.behavior_pool_size != behavior_pool_size:
            raise ValueError(
                f"The checkpoint was trained with behavior_pool_size={state.behavior_pool_size}, this run uses "
                f"{behavior_pool_size}; resume with the same value (the checkpoint holds that pool's members)."
            )
        return state


def rng_state_path(checkpoint: str, rank: int) -> str:
    return os.path.join(checkpoint, f"soup_rng_state_{rank}.pt")


def save_rng_state(checkpoint: str, rank: int, generator: torch.Generator) -> None:
    torch.save({"prefix_generator": generator.get_state()}, rng_state_path(checkpoint, rank))


def load_rng_state(checkpoint: str, rank: int, generator: torch.Generator) -> None:
    """Restore ``generator`` from the rank's file, if the checkpoint has one (a run on fewer ranks may not)."""
    path = rng_state_path(checkpoint, rank)
    if os.path.exists(path):
        generator.set_state(torch.load(path, weights_only=True)["prefix_generator"])
