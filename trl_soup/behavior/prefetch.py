"""Prefetching behavior samples: the behavior responses of upcoming relay batches are sampled while the current step
trains.

Within a refresh window the behavior snapshot is frozen (paper Sec. 3.2) and the prompts of the next generation batches
are already fixed by the sampler, so their behavior responses can be requested early. Two pieces:

- :class:`LookAheadIterator` wraps the trainer's epoch iterator. The trainer still takes batches one by one through it;
  :meth:`~LookAheadIterator.peek` reads a batch further ahead without changing what the trainer gets, or when.
- :class:`BehaviorPrefetcher` runs ``backend.sample`` for those batches on one background thread and hands each result
  back when the trainer reaches that generation batch, only if the prompts and the budget match exactly (otherwise the
  trainer samples synchronously, as without prefetching).

Prefetching changes no sample because behavior sampling is a deterministic function of (snapshot weights, prompt ids,
budget, generation batch index, rank, seed), independent of when it runs: see :func:`behavior_sampling_seed`. The
trainer never prefetches across a refresh boundary (the next window samples with weights that do not exist yet) and
discards every pending result before a refresh.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

_RECENT = 64  # batches already handed to the trainer that can still be located by identity
THREAD_NAME = "soup-behavior-prefetch"
# What one stream shifts a seed by: 2**40 in the high bits (CUDA's generator reads all 64), plus an odd 32-bit constant
# in the low bits (the CPU generator, mt19937, reads only the low 32: a shift by 2**40 alone left it unchanged).
STREAM_SHIFT = 2**40 + 0x9E3779B9


def behavior_sampling_seed(seed: int, generation_batch_index: int, process_index: int, stream: int = 0) -> int:
    """Seed of the behavior sampling stream of one generation batch on one rank.

    A function of the run seed, the generation batch index, the rank and ``stream`` only, never of the global RNG
    state or of the time the sample is drawn: a prefetched sample, a synchronous one and one redrawn after resuming
    from a checkpoint are the same sample. Different batches and ranks get different streams (ranks are separated as
    long as there are fewer than 7919 of them); ``stream`` (the members of a behavior pool, the prefix sources, and
    their choice) shifts the seed by multiples of ``STREAM_SHIFT``, and stream 0 is the seed of a single behavior copy.
    """
    return seed * 1_000_003 + generation_batch_index * 7_919 + process_index + stream * STREAM_SHIFT


@contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Run the block with the global RNG of the CPU (and of ``device`` if it is a CUDA device) seeded with ``seed``,
    and restore the previous states afterwards.

    ``model.generate`` samples from the global RNG and takes no generator. Forking it gives the behavior copy a stream
    of its own: its samples do not depend on what ran before, and the learner's stream (continuations, dropout) does
    not depend on whether behavior samples were drawn.
    """
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)  # this device only; manual_seed_all would touch unforked devices
        yield


class LookAheadIterator:
    """An iterator over ``source`` that can read items ahead of the consumer without reordering them.

    Items are handed out in the order of ``source``; :meth:`peek` pulls items from ``source`` early into a buffer.
    Items already handed out are remembered (the last ``_RECENT``) so the consumer can ask where a batch it holds sits
    in the stream (:meth:`position`).
    """

    def __init__(self, source: Iterator):
        self.source = source
        self._buffer: deque = deque()  # pulled from source, not handed out yet
        self._taken = 0  # items handed out so far
        self._recent: deque = deque(maxlen=_RECENT)  # (absolute index, item) of items handed out

    def __iter__(self):
        return self

    def __next__(self):
        item = self._buffer.popleft() if self._buffer else next(self.source)
        self._recent.append((self._taken, item))
        self._taken += 1
        return item

    def position(self, item: Any) -> int | None:
        """Absolute index in the stream of an item already handed out (found by identity), or None."""
        for index, held in reversed(self._recent):
            if held is item:
                return index
        return None

    def peek(self, index: int) -> Any | None:
        """The item at absolute ``index`` (not handed out yet), pulling it from ``source`` if needed; None past the
        end of ``source`` or for an item already handed out."""
        ahead = index - self._taken
        if ahead < 0:
            return None
        while len(self._buffer) <= ahead:
            try:
                self._buffer.append(next(self.source))
            except StopIteration:
                return None
        return self._buffer[ahead]


def prefetch_schedule(
    current: int, window_end: int | None, max_ahead: int, every: int, step: int, total: int
) -> list[tuple[int, int]]:
    """Which generation batches to request ahead, and where their prompts are in the epoch iterator.

    Args:
        current: the generation batch being produced now.
        window_end: the batch index at which the current refresh window ends at the latest (last refresh + T; None:
            no window yet). Only batches of the window can be sampled: the next window's snapshot does not exist
            yet. A window that a refresh policy ends sooner discards what was sampled ahead for it.
        max_ahead: ``behavior_prefetch``, how many generation batches ahead at most.
        every: micro-steps per generation batch (``steps_per_generation * num_iterations``).
        step: TRL's micro-step counter ``_step`` (a generation happens when ``step % every == 0``).
        total: generation batches of the whole run (nothing past the end is requested).

    Returns:
        ``(generation batch index, offset)`` pairs: the batch of the epoch iterator ``offset`` items after the
        current one holds the prompts of that generation batch.
    """
    first = every - step % every  # micro-steps (= batches of the iterator) to the next generation
    schedule = []
    for ahead in range(1, max_ahead + 1):
        index = current + ahead
        if window_end is None or index >= window_end or index >= total:
            break
        schedule.append((index, first + (ahead - 1) * every))
    return schedule


class BehaviorPrefetcher:
    """A bounded queue of behavior samples requested ahead of time, keyed by generation batch index.

    ``sample_fn(prompt_ids, max_new_tokens, generation_batch_index)`` runs on one background thread. A result is used
    only for the generation batch it was requested for, with the same prompt ids and budget.
    """

    def __init__(self, sample_fn, max_ahead: int):
        if max_ahead < 1:
            raise ValueError(f"max_ahead={max_ahead!r} is invalid: it must be an integer >= 1.")
        self.sample_fn = sample_fn
        self.max_ahead = max_ahead
        self._pending: dict[int, tuple[list[list[int]], int, Future]] = {}
        self._executor: ThreadPoolExecutor | None = None  # started by the first request, ended by close()
        self.lookahead: LookAheadIterator | None = None
        self.requested: list[tuple[int, int]] = []  # (current batch, requested batch), for inspection and tests

    def watch(self, epoch_iterator: Iterator) -> LookAheadIterator:
        """The look-ahead wrapper of the trainer's current epoch iterator (a new one for a new epoch or a resume)."""
        if self.lookahead is None or self.lookahead.source is not epoch_iterator:
            self.lookahead = LookAheadIterator(epoch_iterator)
        return self.lookahead

    def __len__(self) -> int:
        return len(self._pending)

    def has(self, generation_batch_index: int) -> bool:
        return generation_batch_index in self._pending

    def submit(self, generation_batch_index: int, prompt_ids: list[list[int]], max_new_tokens: int, current: int):
        """Request the behavior samples of a future generation batch; refused (False) beyond the bound."""
        if generation_batch_index in self._pending or not 0 < generation_batch_index - current <= self.max_ahead:
            return False
        prompt_ids = [list(ids) for ids in prompt_ids]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        future = self._executor.submit(self.sample_fn, prompt_ids, max_new_tokens, generation_batch_index)
        self._pending[generation_batch_index] = (prompt_ids, max_new_tokens, future)
        self.requested.append((current, generation_batch_index))
        return True

    def request_ahead(
        self, current_batch, schedule: list[tuple[int, int]], tokenize, max_new_tokens: int, current: int
    ) -> None:
        """Submit the batches of ``schedule`` (from :func:`prefetch_schedule`), their prompts read through the
        look-ahead ``offset`` items after ``current_batch``; ``tokenize(batch) -> prompt ids``."""
        position = None if self.lookahead is None else self.lookahead.position(current_batch)
        if position is None:  # not a batch of the epoch iterator
            return
        for index, offset in schedule:
            batch = self.lookahead.peek(position + offset)
            if batch is None:
                break  # end of the epoch
            if not self.has(index):
                self.submit(index, tokenize(batch), max_new_tokens, current=current)

    def take(self, generation_batch_index: int, prompt_ids: list[list[int]], max_new_tokens: int):
        """The prefetched samples of this generation batch (waiting for them if still in flight), or None when none
        were requested with these prompt ids and this budget. Entries of earlier batches are dropped."""
        for stale in [i for i in self._pending if i < generation_batch_index]:
            self._drop(stale)
        entry = self._pending.pop(generation_batch_index, None)
        if entry is None:
            return None
        expected_ids, expected_budget, future = entry
        if expected_budget != max_new_tokens or expected_ids != [list(ids) for ids in prompt_ids]:
            _wait_quietly(future)
            return None
        return future.result()  # a failed request raises here, in the training thread

    def clear(self) -> None:
        """Discard every pending request, waiting for those in flight (called before the snapshot changes)."""
        for index in list(self._pending):
            self._drop(index)

    def _drop(self, index: int) -> None:
        _, _, future = self._pending.pop(index)
        if not future.cancel():
            _wait_quietly(future)

    def close(self) -> None:
        """Cancel every request not started yet, wait for the one in flight (if any) and end the background thread.

        Called when ``train()`` returns or raises, so no thread outlives it and nothing still queued delays the
        interpreter's exit. The prefetcher can be used again afterwards (a later ``train()`` starts a new thread).
        """
        pending, self._pending = self._pending, {}
        for _, _, future in pending.values():
            future.cancel()
        self.lookahead = None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


def _wait_quietly(future: Future) -> None:
    """Wait for a request whose result is thrown away; its error, if any, is not this batch's."""
    try:
        future.result()
    except Exception:  # noqa: BLE001 - the discarded request's failure does not concern the batch at hand
        pass
