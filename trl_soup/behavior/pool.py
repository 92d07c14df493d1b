"""A pool of K historical snapshots of the learner (``behavior_pool_size`` K > 1), one backend member per slot.

Each refresh pushes the learner's weights into one slot (:func:`trl_soup.pool.pool_victim`: an empty slot, else
the one holding the oldest snapshot), so the pool holds the snapshots of the K most recent refreshes and a refresh
costs one copy, as with a single snapshot. For each relay batch, ``behavior_pool_sampling`` names the member that
writes each row (:func:`trl_soup.pool.choose_pool_members`, seeded per generation batch and rank); the rows of a
member are sampled by that member in one call, so each row's prefix and its log-probs (the Eq. 5 denominator) are
those of the snapshot that wrote it.

Members, by backend: ``"local"`` full copies (memory grows K-fold), ``"local"`` PEFT adapters ``behavior``,
``behavior_1``, ... (K adapters on the shared base weights), or ``"vllm_server"`` with ``behavior_refresh_method=
"lora"`` (K LoRA adapters on one server). Other combinations are refused by SOUPConfig and
:func:`trl_soup.checks.check_trainer_arguments`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch

from ..pool import choose_pool_members, pool_age_order, pool_victim
from .base import BehaviorBackend, BehaviorSamples, inner_stream
from .context import BehaviorContext

POOL_STATE_FILE = "soup_pool.json"

__all__ = ["POOL_STATE_FILE", "BehaviorPool", "merge_member_samples", "sample_in_groups"]


def merge_member_samples(
    parts: list[tuple[list[int], BehaviorSamples]], num_rows: int, pad_token_id: int
) -> BehaviorSamples:
    """One :class:`BehaviorSamples` of ``num_rows`` rows from each member's (or source's) ``(rows, samples)``: row
    ``rows[j]`` of the result is row ``j`` of that part's samples, right-padded to the longest response; pool member
    ages are kept (-1 on rows of parts without them)."""
    width = max(samples.completion_ids.size(1) for _, samples in parts)
    device = parts[0][1].completion_ids.device

    def gather(name: str, value) -> torch.Tensor:
        first = getattr(parts[0][1], name)
        shape = (num_rows, width) if first.dim() == 2 else (num_rows,)
        out = torch.full(shape, value, dtype=first.dtype, device=device)
        for rows, samples in parts:
            tensor = getattr(samples, name)
            index = torch.tensor(rows, dtype=torch.long, device=device)
            if tensor.dim() == 2:
                out[index, : tensor.size(1)] = tensor
            else:
                out[index] = tensor
        return out

    merged = BehaviorSamples(
        completion_ids=gather("completion_ids", pad_token_id),
        mask=gather("mask", 0),
        per_token_logps=gather("per_token_logps", 0.0),
        entropies=gather("entropies", 0.0),
        ended_with_eos=gather("ended_with_eos", False),
    )
    if any(samples.member_ages is not None for _, samples in parts):  # a pool's rows among others: -1 elsewhere
        merged.member_ages = torch.full((num_rows,), -1, dtype=torch.long, device=device)
        for rows, samples in parts:
            if samples.member_ages is not None:
                merged.member_ages[torch.tensor(rows, dtype=torch.long, device=device)] = samples.member_ages
    return merged


def sample_in_groups(
    groups: list[int], sample_group: Callable[[int, list[int]], BehaviorSamples], pad_token_id: int
) -> BehaviorSamples:
    """Rows sampled group by group: ``groups[i]`` is row i's group, ``sample_group(group, rows)`` samples those rows
    (in that order) in one call; the result has every row in its place (:func:`merge_member_samples`)."""
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    parts = [(rows, sample_group(group, rows)) for group, rows in sorted(members.items())]
    if len(parts) == 1:
        return parts[0][1]  # one group wrote every row: its samples as they are
    return merge_member_samples(parts, len(groups), pad_token_id)


class BehaviorPool(BehaviorBackend):
    """K behavior members (one backend instance each) behind the one-backend interface the trainer uses.

    Attributes:
        members: the K backends, by slot.
        births: generation batch index of each slot's last refresh (None while the slot is empty).
    """

    def __init__(self, context: BehaviorContext, members: list[BehaviorBackend]):
        self.context = context
        self.members = members
        self.births: list[int | None] = [None] * len(members)

    @property
    def size(self) -> int:
        return len(self.members)

    def age_order(self) -> list[int]:
        """The filled slots, newest snapshot first (an age rank is a position in this list)."""
        return pool_age_order(self.births)

    def refresh(self) -> None:
        slot = pool_victim(self.births)
        self.members[slot].refresh()
        self.births[slot] = self.context.generation_batch_index()

    def sample(
        self,
        prompt_ids: list[list[int]],
        max_new_tokens: int,
        generation_batch_index: int,
        stream: int = 0,
        rows: list[dict] | None = None,
    ) -> BehaviorSamples:
        """Each row from the member ``behavior_pool_sampling`` names; at stream 0 the member of age rank r samples its
        rows with stream r and the choice of members uses stream K, so that ``"newest"`` draws exactly the samples of
        a single snapshot (another stream: :func:`~trl_soup.behavior.base.inner_stream`). Reads ``births`` only: safe
        in the prefetcher's thread, which never runs across a refresh."""
        context, index, width = self.context, generation_batch_index, self.size + 1
        generator = context.sampling_generator(index, inner_stream(stream, self.size, width))
        births = list(self.births)
        ranks = choose_pool_members(context.args.behavior_pool_sampling, len(prompt_ids), births, index, generator)
        order = pool_age_order(births)

        def sample_member(age_rank: int, rows: list[int]) -> BehaviorSamples:
            member = self.members[order[age_rank]]
            subset = [prompt_ids[i] for i in rows]
            return member.sample(subset, max_new_tokens, index, stream=inner_stream(stream, age_rank, width))

        samples = sample_in_groups(ranks, sample_member, context.sampling.pad_token_id)
        samples.member_ages = torch.tensor(ranks, dtype=torch.long, device=samples.completion_ids.device)
        return samples

    # ------------------------------------------------------------------------------------------------ checkpoints
    def checkpoint_snapshot(self, directory: str, mid_window: bool) -> bool:
        """Every member a resume samples from: all filled slots mid-window; at a window end all but the one the next
        refresh overwrites. ``soup_pool.json`` holds the births (which slot is how old)."""
        victim = None if mid_window else pool_victim(self.births)
        slots = [slot for slot in self.age_order() if slot != victim]
        if self.context.args.should_save:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, POOL_STATE_FILE), "w") as f:
                json.dump({"size": self.size, "births": self.births, "saved": slots}, f)
        for slot in slots:  # every rank: a member's save may be a collective
            self.members[slot].save_snapshot(os.path.join(directory, f"member-{slot}"))
        return True

    def save_snapshot(self, directory: str) -> None:
        self.checkpoint_snapshot(directory, mid_window=True)

    def load_snapshot(self, directory: str) -> None:
        path = os.path.join(directory, POOL_STATE_FILE)
        if not os.path.isfile(path):
            raise ValueError(
                f"The checkpoint's behavior snapshot ({directory}) holds one snapshot, not a pool: resume with "
                f"behavior_pool_size=1 (this run uses {self.size})."
            )
        with open(path) as f:
            saved = json.load(f)
        if saved["size"] != self.size:
            raise ValueError(
                f"The checkpoint holds a behavior pool of {saved['size']} snapshots, this run uses behavior_pool_size="
                f"{self.size}; resume with the same value."
            )
        self.births = list(saved["births"])
        for slot in saved["saved"]:
            self.members[slot].load_snapshot(os.path.join(directory, f"member-{slot}"))

    def clean_saved_model(self, output_dir: str) -> None:
        for member in self.members:
            member.clean_saved_model(output_dir)
