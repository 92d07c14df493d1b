"""Typed records passed between SOUPTrainer's hooks (and read by tests and tools).

- :class:`RelayRecord`: what one relay generation did on this rank, from ``_generate_single_turn`` to
  ``_generate_and_score_completions``; the last one stays readable as ``SOUPTrainer.last_relay_record``.
- :class:`LossCapture`: what the loss forward computed, from ``_get_per_token_logps_and_entropies`` to
  ``_compute_loss`` (and, with ``old_logps_from_loss_forward``, the denominator it fills in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .core import build_prefix_mask, mixed_old_per_token_logps

__all__ = ["GROUP_FIELDS", "LossCapture", "RelayRecord", "relay_batch_fields"]

# Batch keys that name the writer of each relay row -> the RelayRecord field they come from.
GROUP_FIELDS = {"behavior_member_age": "member_ages", "prefix_source_id": "source_ids"}


@dataclass
class RelayRecord:
    """One relay generation batch on this rank, one row per sample.

    Attributes:
        prefix_lengths: ``(B,)`` long, tokens of each completion written by the behavior copy (the prefix).
        prefix_logps: ``B`` float tensors, log pi_behavior of each prefix token (the Eq. 5 denominator there).
        behavior_lengths: ``(B,)`` long, length of each full behavior response before it was cut.
        no_continuation: ``(B,)`` bool, prefixes that are final (ended in EOS, or left no budget): no continuation.
        behavior_completion_ids: ``B`` lists, the full responses the behavior copy sampled (for inspection).
        member_ages: ``(B,)`` long, with a behavior pool the age rank of the member that wrote each row (0: newest
            snapshot); None without a pool.
        source_ids: ``(B,)`` long, with several prefix sources the index of each row's source in
            ``trl_soup.sources.source_names(args)``; None with one source.
    """

    prefix_lengths: torch.Tensor
    prefix_logps: list[torch.Tensor]
    behavior_lengths: torch.Tensor
    no_continuation: torch.Tensor
    behavior_completion_ids: list[list[int]]
    member_ages: torch.Tensor | None = None
    source_ids: torch.Tensor | None = None

    def behavior_per_token_logps(self, completion_length: int, device) -> torch.Tensor:
        """``(B, completion_length)`` float32: the prefix log-probs left-aligned, 0 on continuation and padding."""
        out = torch.zeros(len(self.prefix_logps), completion_length, dtype=torch.float32, device=device)
        for i, logps in enumerate(self.prefix_logps):
            out[i, : logps.numel()] = logps.to(device)
        return out

    def length_sums(self, device) -> torch.Tensor:
        """``(4,)``: sums of prefix lengths, behavior lengths, final prefixes, and the row count (to reduce)."""
        return torch.tensor(
            [
                float(self.prefix_lengths.sum()),
                float(self.behavior_lengths.sum()),
                float(self.no_continuation.sum()),
                float(len(self.prefix_logps)),
            ],
            device=device,
        )


def relay_batch_fields(record: RelayRecord | None, completion_ids: torch.Tensor, group_keys) -> dict:
    """The batch keys SOUP's loss reads, for a batch of ``completion_ids`` ``(B, L)``: ``prefix_mask`` (Eq. 4) and
    ``behavior_per_token_logps`` (0 off the prefix; all 0 without a record: an on-policy batch), and for each key of
    ``group_keys`` (of :data:`GROUP_FIELDS`) which pool member / prefix source wrote each row (-1: none)."""
    batch, length = completion_ids.shape
    device = completion_ids.device
    if record is None:
        prefix_lengths = torch.zeros(batch, dtype=torch.long, device=device)
        behavior = torch.zeros(batch, length, dtype=torch.float32, device=device)
    else:
        prefix_lengths = record.prefix_lengths.to(device)
        behavior = record.behavior_per_token_logps(length, device)
    fields = {"behavior_per_token_logps": behavior, "prefix_mask": build_prefix_mask(prefix_lengths, length)}
    for key in group_keys:
        values = None if record is None else getattr(record, GROUP_FIELDS[key])
        fields[key] = (torch.full((batch,), -1, dtype=torch.long) if values is None else values).to(device)
    return fields


@dataclass
class LossCapture:
    """The loss forward's values, recorded for the ``soup/`` segment statistics.

    With ``old_logps_from_loss_forward`` on a relay batch, ``deferred_denominator`` holds the Eq. 5 denominator with
    the behavior log-probs on the prefix; :meth:`record` fills its continuation with the loss forward's own log-probs
    (pi_old = pi_theta there: generation and optimisation are aligned) before TRL computes the ratio.
    """

    per_token_logps: torch.Tensor | None = None
    entropies: torch.Tensor | None = None
    deferred_denominator: torch.Tensor | None = None
    deferred_prefix_mask: torch.Tensor | None = None

    def loss_inputs(self, inputs: dict, defer_allowed: bool) -> dict:
        """The batch TRL's loss gets: ``old_per_token_logps`` replaced by paper Eq. 5's denominator, pi_behavior on
        prefix tokens and pi_old on continuation tokens. A relay batch without pi_old (``defer_allowed``: with
        ``old_logps_from_loss_forward``) gets the behavior log-probs on the prefix now; :meth:`record` fills the
        continuation in place from the loss forward before TRL computes the ratio. Other batches are unchanged."""
        prefix_mask, old = inputs["prefix_mask"], inputs.get("old_per_token_logps")
        if old is not None:
            denominator = mixed_old_per_token_logps(prefix_mask, inputs["behavior_per_token_logps"], old)
            return {**inputs, "old_per_token_logps": denominator}
        if not bool(prefix_mask.any()):
            return inputs
        if not defer_allowed:
            raise RuntimeError("A relay batch reached the loss without old_per_token_logps.")
        self.deferred_denominator = inputs["behavior_per_token_logps"].clone()
        self.deferred_prefix_mask = prefix_mask
        return {**inputs, "old_per_token_logps": self.deferred_denominator}

    def record(self, per_token_logps: torch.Tensor, entropies: torch.Tensor | None) -> None:
        self.per_token_logps = per_token_logps.detach()
        self.entropies = None if entropies is None else entropies.detach()
        if self.deferred_denominator is not None:
            filled = mixed_old_per_token_logps(
                self.deferred_prefix_mask, self.deferred_denominator, self.per_token_logps
            )  # Eq. 5
            self.deferred_denominator.copy_(filled)
            self.deferred_denominator = None  # filled once: later forwards of the same loss only record
