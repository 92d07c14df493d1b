"""The behavior layer's two interfaces, and what every backend shares.

- Sampling: :class:`BehaviorBackend` (``sample``, plus refresh and checkpoint), implemented by every backend and prefix
  source.
- Scoring: :class:`Scorer` (``score``: the log-probs and entropies of given responses), implemented by the local
  backend; the dataset prefix source scores its references with one.

``rows`` (the dataset examples of the prompt rows) is passed only to backends that declare ``needs_rows = True``
(:func:`sample_from`: the relay session, the source mixture and the dataset source's fallback call through it); the
other backends take the argument, as the interface does, and never receive it.

Shared here, written once: token lists to right-padded samples (:func:`padded_rows`, :func:`samples_from_token_rows`),
"ended with EOS" (:func:`ended_with_eos`), and the streams of a backend that draws from several (:func:`inner_stream`).
Seeding is :meth:`trl_soup.behavior.context.BehaviorContext.sampling_seed`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
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

    needs_rows = False  # True: sample() gets the batch's dataset rows (rows=); False: it never gets them

    @abstractmethod
    def refresh(self) -> None:
        """Copy the learner's current weights into the behavior copy."""

    @abstractmethod
    def sample(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        generation_batch_index: int,
        stream: int = 0,
        rows: list[dict] | None = None,
    ) -> BehaviorSamples:
        """Sample one response of at most ``max_new_tokens`` tokens per prompt row with the behavior copy, with its
        log-probs and entropies.

        The result must be a deterministic function of (snapshot, prompt ids, budget, generation batch index, rank,
        run seed, ``stream``), independent of when it is called (see
        :func:`trl_soup.behavior.prefetch.behavior_sampling_seed`): that is what makes prefetching and resuming exact.
        ``generation_batch_index`` is required (the relay session passes its counter); ``stream`` separates the
        random streams of the members of a pool, or of the prefix sources, within one batch (0 for a single behavior
        copy): every backend that samples at random seeds from it. ``rows``: the dataset examples of the prompt rows,
        one per row, passed only to a backend with ``needs_rows`` (the dataset source reads its reference completions
        there; see :func:`sample_from`).
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


class Scorer(ABC):
    """Scores given responses with a frozen policy (the dataset source's references)."""

    @abstractmethod
    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C)`` log-probs (temperature-scaled like TRL's) and entropies of ``completion_ids[i]`` after
        ``prompt_ids[i]``, right-padded like :func:`padded_rows` (C: the longest response, at least 1)."""


def sample_from(backend, prompt_ids, max_new_tokens: int, generation_batch_index: int, stream: int = 0, rows=None):
    """``backend.sample(...)`` (:class:`BehaviorSamples`), with ``rows`` only when the backend declares ``needs_rows``
    (a registered source that subclasses nothing included)."""
    if getattr(backend, "needs_rows", False):
        return backend.sample(prompt_ids, max_new_tokens, generation_batch_index, stream, rows=rows)
    return backend.sample(prompt_ids, max_new_tokens, generation_batch_index, stream)


def inner_stream(stream: int, inner: int, width: int) -> int:
    """Stream ``inner`` (0 <= inner < ``width``) of a backend that draws from ``width`` streams of its own (a pool: one
    per member and one for the choice of members; a source mixture: its sources' and its choice) when it is sampled
    with ``stream``: ``inner`` itself at stream 0, and a block of ``width`` streams for each other stream."""
    return stream * width + inner


def padded_rows(
    rows: Sequence[Sequence], padding_value, dtype: torch.dtype = torch.long, trailing: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token values given as one list per row, of any lengths (token ids, log-probs, or entries of shape
    ``trailing``), as a right-padded ``(B, L, *trailing)`` CPU tensor and its ``(B, L)`` long mask; L is the longest
    row, at least 1."""
    width = max(1, max((len(row) for row in rows), default=0))
    values = torch.full((len(rows), width, *trailing), padding_value, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            values[i, : len(row)] = torch.as_tensor(row, dtype=dtype)
            mask[i, : len(row)] = 1
    return values, mask


def ended_with_eos(rows: Sequence[Sequence[int]], eos_token_ids) -> torch.Tensor:
    """``(B,)`` bool: whether each response (a list of token ids) ends with an EOS token (an empty one does not)."""
    eos = set(eos_token_ids)
    return torch.tensor([len(row) > 0 and int(row[-1]) in eos for row in rows], dtype=torch.bool)


def samples_from_token_rows(
    rows: Sequence[Sequence[int]],
    per_token_logps: torch.Tensor,
    entropies: torch.Tensor,
    eos_token_ids,
    pad_token_id: int,
    device,
) -> BehaviorSamples:
    """:class:`BehaviorSamples` of responses given as token lists (a server's, a data set's, empty ones): ids
    right-padded (:func:`padded_rows`), ``(B, L)`` log-probs and entropies as float32, zero on padding, and
    :func:`ended_with_eos`."""
    ids, mask = padded_rows(rows, pad_token_id)
    mask = mask.to(device)
    return BehaviorSamples(
        completion_ids=ids.to(device),
        mask=mask,
        per_token_logps=per_token_logps.float().to(device) * mask,
        entropies=entropies.float().to(device) * mask,
        ended_with_eos=ended_with_eos(rows, eos_token_ids).to(device),
    )
