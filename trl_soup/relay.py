"""Relay sampling of one generation batch (paper Sec. 3.2), without the trainer.

behavior samples -> prefixes (a truncation strategy) -> continuation requests -> completions and a
:class:`~trl_soup.records.RelayRecord`. The trainer supplies the behavior samples and the continuation generator
(TRL's own generation, transformers or vLLM); everything in between is here and testable without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .behavior.base import BehaviorSamples
from .core import continuation_budgets, continuation_importance_sampling_ratio
from .metrics import continuation_ratio_summary
from .records import RelayRecord
from .truncation import compute_prefix_lengths

__all__ = [
    "ContinuationPlan",
    "assemble_relay",
    "plan_continuations",
    "relay_generation",
    "restrict_vllm_correction",
]

# continuation(requests, max_new_tokens) -> (token ids, sampling log-probs or None), one answer per request
ContinuationFn = Callable[[list[list[int]], int], tuple[list[list[int]], list[list[float]] | None]]


@dataclass
class ContinuationPlan:
    """What the current policy is asked to write after each behavior prefix.

    Attributes:
        prefix_lengths: ``(B,)`` long, tokens kept from each behavior response.
        prefixes: ``B`` lists, the kept prefix tokens.
        budgets: ``(B,)`` long, each row's continuation budget ``max_completion_length - len(prefix)`` (0 if final).
        finished: ``(B,)`` bool, final prefixes (ended in EOS, or no budget left): their continuation is dropped.
        sent: rows that get a request: the unfinished ones, or every row when ``send_every_row`` (TRL's vLLM path
            hands answers back in equal slices per rank, so a rank cannot send fewer requests than rows).
        requests: ``[prompt, prefix]`` token ids of each row in ``sent``.
    """

    prefix_lengths: torch.Tensor
    prefixes: list[list[int]]
    budgets: torch.Tensor
    finished: torch.Tensor
    sent: list[int]
    requests: list[list[int]]

    @property
    def max_budget(self) -> int:
        """The largest budget of a row that continues (1 when none does: one throw-away token)."""
        rows = ~self.finished
        return int(self.budgets[rows].max()) if bool(rows.any()) else 1


def plan_continuations(
    prompt_ids: list[list[int]],
    samples: BehaviorSamples,
    prefix_lengths: torch.Tensor,
    max_completion_length: int,
    send_every_row: bool = False,
) -> ContinuationPlan:
    """Cut each behavior response to its prefix and build the continuation requests (the relay rule of
    :func:`trl_soup.core.continuation_budgets`)."""
    prefix_lengths = prefix_lengths.cpu()
    budgets, finished = continuation_budgets(
        prefix_lengths, samples.lengths.cpu(), samples.ended_with_eos.cpu(), max_completion_length
    )
    behavior_ids = samples.completion_ids.cpu()
    prefixes = [behavior_ids[i, : prefix_lengths[i]].tolist() for i in range(len(prompt_ids))]
    sent = [i for i in range(len(prompt_ids)) if send_every_row or not finished[i]]
    requests = [list(prompt_ids[i]) + prefixes[i] for i in sent]
    return ContinuationPlan(prefix_lengths, prefixes, budgets, finished, sent, requests)


def assemble_relay(
    plan: ContinuationPlan,
    samples: BehaviorSamples,
    continuation: tuple[list[list[int]], list[list[float]] | None] | None,
    nan_prefix_logps: bool = False,
) -> tuple[list[list[int]], list[list[float]] | None, RelayRecord]:
    """Join each prefix with its continuation (cut to the row's own budget) into the completions.

    Args:
        plan: from :func:`plan_continuations`.
        samples: the behavior samples the plan was built from.
        continuation: the answers to ``plan.requests`` (ids, sampling log-probs or None), or None if none was sent.
        nan_prefix_logps: return sampling log-probs with NaN on prefix tokens (TRL's "no sampling log-prob" marker,
            which its vLLM importance-sampling correction leaves out), followed by the continuation's own.

    Returns:
        ``(completion_ids, sampling_logps, record)``: ``B`` token lists, per-token log-probs or None, the record.
    """
    size = len(plan.prefixes)
    continuations, continuation_logps = _cut_continuations(plan, continuation)
    completion_ids = [plan.prefixes[i] + continuations.get(i, []) for i in range(size)]
    sampling_logps = None
    if nan_prefix_logps:
        sampling_logps = [[float("nan")] * len(plan.prefixes[i]) + continuation_logps.get(i, []) for i in range(size)]
    record = _relay_record(plan, samples)
    return completion_ids, sampling_logps, record


def _cut_continuations(
    plan: ContinuationPlan, continuation: tuple[list[list[int]], list[list[float]] | None] | None
) -> tuple[dict[int, list[int]], dict[int, list[float]]]:
    """The answer of each row that continues, cut to the row's own budget, by row index.

    Returns:
        ``(tokens, logps)``: token ids and sampling log-probs (cut exactly like the tokens; empty when the answers
        carry none) of the rows of ``plan.sent`` that are not final. Both are empty when ``continuation`` is None.
    """
    continuations: dict[int, list[int]] = {}
    continuation_logps: dict[int, list[float]] = {}
    if continuation is not None:
        ids, logps = continuation
        for k, i in enumerate(plan.sent):
            if not plan.finished[i]:
                budget = int(plan.budgets[i])  # per-row budget max_completion_length - len(prefix)
                continuations[i] = list(ids[k])[:budget]
                if logps is not None:
                    continuation_logps[i] = list(logps[k])[:budget]  # truncated exactly like the tokens
    return continuations, continuation_logps


def _relay_record(plan: ContinuationPlan, samples: BehaviorSamples) -> RelayRecord:
    """The :class:`~trl_soup.records.RelayRecord` of a planned batch: prefixes, their behavior log-probs, the full
    behavior responses and (with a pool or several prefix sources) each row's member age and source."""
    size = len(plan.prefixes)
    lengths = samples.lengths.cpu()
    behavior_ids = samples.completion_ids.cpu()
    return RelayRecord(
        prefix_lengths=plan.prefix_lengths,
        prefix_logps=[samples.per_token_logps[i, : plan.prefix_lengths[i]].float() for i in range(size)],
        behavior_lengths=lengths,
        no_continuation=plan.finished,
        behavior_completion_ids=[behavior_ids[i, : lengths[i]].tolist() for i in range(size)],
        member_ages=None if samples.member_ages is None else samples.member_ages.cpu(),
        source_ids=None if samples.source_ids is None else samples.source_ids.cpu(),
    )


def relay_generation(
    prompt_ids: list[list[int]],
    samples: BehaviorSamples,
    args,
    generator: torch.Generator,
    continue_fn: ContinuationFn,
    *,
    max_completion_length: int,
    use_vllm: bool = False,
    collective: bool = False,
    reduce_max: Callable[[int], int] | None = None,
):
    """One relay generation batch: cut the behavior responses, ask ``continue_fn`` for the continuations, assemble.

    Args:
        prompt_ids: the batch's prompt token ids.
        samples: the behavior copy's full responses for these prompts.
        args: the SOUPConfig (``prefix_strategy`` and its options).
        generator: the truncation RNG (advanced by random strategies).
        continue_fn: ``(requests, max_new_tokens) -> (ids, logps)``, the current policy's generation.
        max_completion_length: the trajectory budget.
        use_vllm: TRL's vLLM path: one request per row, NaN sampling log-probs on prefix tokens.
        collective: generation is collective (ZeRO-3 / FSDP gathers weights): call ``continue_fn`` even when no row
            of this rank continues (one throw-away request).
        reduce_max: with vLLM, the largest budget over ranks (all ranks' requests share one ``max_tokens``).

    Returns:
        ``(completion_ids, sampling_logps, record)`` as :func:`assemble_relay`.
    """
    prefix_lengths = _behavior_prefix_lengths(samples, args, generator)
    plan = plan_continuations(prompt_ids, samples, prefix_lengths, max_completion_length, send_every_row=use_vllm)
    continuation = _request_continuations(plan, prompt_ids, continue_fn, collective, reduce_max)
    return assemble_relay(plan, samples, continuation, nan_prefix_logps=use_vllm)


def _behavior_prefix_lengths(samples: BehaviorSamples, args, generator: torch.Generator) -> torch.Tensor:
    """``(B,)`` prefix lengths of the behavior responses under ``args.prefix_strategy`` (paper Sec. 3.3)."""
    return compute_prefix_lengths(
        args.prefix_strategy,
        samples.completion_ids,
        samples.per_token_logps,
        samples.entropies,
        samples.mask,
        generator,
        args,
    )


def _request_continuations(
    plan: ContinuationPlan,
    prompt_ids: list[list[int]],
    continue_fn: ContinuationFn,
    collective: bool,
    reduce_max: Callable[[int], int] | None,
) -> tuple[list[list[int]], list[list[float]] | None] | None:
    """Ask ``continue_fn`` once for the plan's continuations, with the largest budget (over ranks with
    ``reduce_max``); None when no row continues and the generation is not collective (else, with no request, one
    throw-away request: the first prompt)."""
    if not (plan.requests or collective):
        return None
    max_budget = plan.max_budget if reduce_max is None else reduce_max(plan.max_budget)
    return continue_fn(plan.requests or [list(prompt_ids[0])], max_budget)


@torch.no_grad()
def restrict_vllm_correction(batch: dict) -> torch.Tensor | None:
    """Make the prefix tokens of a relay batch neutral in TRL's vLLM importance-sampling correction (in place).

    The relay generation gave TRL NaN sampling log-probs on prefix tokens, so TRL's correction already ignored them
    (a zero log-ratio: ratio 1 in token modes, no share of a sequence-level ratio). Here the behavior log-probs
    replace the NaN in ``sampling_per_token_logps``, and ``importance_sampling_ratio`` is set to exactly 1 on prefix
    tokens in every mode (:func:`trl_soup.core.continuation_importance_sampling_ratio`).

    Args:
        batch: TRL's generation output with SOUP's ``prefix_mask`` and ``behavior_per_token_logps``.

    Returns:
        The ``(3,)`` min / mean / max of TRL's ratio over the continuation
        (:func:`trl_soup.metrics.continuation_ratio_summary`), or None without the correction.
    """
    prefix_mask = batch["prefix_mask"]
    sampling = batch.get("sampling_per_token_logps")
    if sampling is not None:
        batch["sampling_per_token_logps"] = torch.where(
            prefix_mask.bool(), batch["behavior_per_token_logps"], sampling
        )
    ratio = batch.get("importance_sampling_ratio")
    if ratio is None:
        return None
    batch["importance_sampling_ratio"] = continuation_importance_sampling_ratio(ratio, prefix_mask)
    return continuation_ratio_summary(ratio, batch["completion_mask"], prefix_mask)
