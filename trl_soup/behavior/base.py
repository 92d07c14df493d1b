"""Interface of a behavior backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass
class BehaviorSamples:
    """Full responses sampled by the behavior policy, one per prompt row.

    Attributes:
        completion_ids: ``(B, C)`` sampled token ids, right-padded (EOS included, nothing after it).
        mask: ``(B, C)`` 1 on valid response tokens.
        per_token_logps: ``(B, C)`` log pi_behavior of each sampled token (temperature-scaled like TRL's).
        entropies: ``(B, C)`` entropy of pi_behavior at each position (for entropy truncation).
        ended_with_eos: ``(B,)`` whether the response terminated with an EOS token.
        member_ages: ``(B,)`` long, with a pool of snapshots (``behavior_pool_size`` > 1) the age rank of the member
            that wrote each row (0: the newest snapshot; -1: a row another prefix source wrote); None otherwise.
        source_ids: ``(B,)`` long, with several prefix sources (``prefix_source_weights``) the index of each row's
            source in :func:`trl_soup.sources.source_names`; None otherwise.
    """

    completion_ids: torch.Tensor
    mask: torch.Tensor
    per_token_logps: torch.Tensor
    entropies: torch.Tensor
    ended_with_eos: torch.Tensor
    member_ages: torch.Tensor | None = None
    source_ids: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)


class BehaviorBackend(ABC):
    """A frozen historical copy of the learner, or another source of relay prefixes (:mod:`trl_soup.sources`)."""

    needs_rows = False  # True: sample() must get the batch's dataset rows

    @abstractmethod
    def refresh(self) -> None:
        """Copy the learner's current weights into the behavior copy."""

    @abstractmethod
    def sample(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        generation_batch_index: int | None = None,
        stream: int = 0,
        rows: list[dict] | None = None,
    ) -> BehaviorSamples:
        """Sample one response of at most ``max_new_tokens`` tokens per prompt row with the behavior copy, with its
        log-probs and entropies.

        The result must be a deterministic function of (snapshot, prompt ids, budget, generation batch index, rank,
        run seed, ``stream``), independent of when it is called (see
        :func:`trl_soup.behavior.prefetch.behavior_sampling_seed`): that is what makes prefetching and resuming exact.
        ``generation_batch_index`` defaults to the trainer's; ``stream`` separates the random streams of the members
        of a pool, or of the prefix sources, within one batch (0 for a single behavior copy). ``rows``: the dataset
        examples of the prompt rows, one per row, for sources with ``needs_rows`` (the dataset source reads its
        reference completions there); other backends ignore it.
        """

    @abstractmethod
    def save_snapshot(self, directory: str) -> None:
        """Write the behavior copy's weights into ``directory`` (called mid-window when a checkpoint is saved)."""

    @abstractmethod
    def load_snapshot(self, directory: str) -> None:
        """Restore the behavior copy written by :meth:`save_snapshot` (called when resuming mid-window)."""

    def checkpoint_snapshot(self, directory: str, mid_window: bool) -> bool:
        """Write into ``directory`` what a run resumed from this checkpoint needs, and say whether anything was written
        (called on every rank). A single snapshot is needed mid-window only: at a window end the next batch refreshes
        it from the resumed learner anyway."""
        if mid_window:
            self.save_snapshot(directory)
        return mid_window

    def clean_saved_model(self, output_dir: str) -> None:
        """Remove from a saved model folder what the backend put there that is not the trained model (called after
        every save; default: nothing)."""
        return None
