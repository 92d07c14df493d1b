"""The behavior copy's life over a run, without the trainer: the relay session.

:class:`RelaySession` owns what carries from one generation batch to the next: the generation-batch counter, the
refresh schedule (:mod:`trl_soup.refresh`), the background prefetch of behavior samples
(:mod:`trl_soup.behavior.prefetch`), the truncation RNG, and their checkpoint state (:mod:`trl_soup.state`). The
trainer calls it in a few places (before and after each generation batch, at a checkpoint, at a resume); it gets
plain values (the arguments, the behavior backend, the rank, a metrics mapping) and never the trainer, so it is tested
without a model (tests/test_session.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, MutableMapping

import torch

from .behavior.base import sample_from
from .behavior.prefetch import BehaviorPrefetcher, prefetch_schedule
from .refresh import REFRESH_REASONS, RefreshSchedule
from .state import SNAPSHOT_DIR, SOUPState, load_rng_state, save_rng_state
from .truncation import behavior_decode_budget

__all__ = ["RelaySession"]


class RelaySession:
    """Refresh, prefetch and checkpoint state of SOUP's behavior copy.

    Args:
        args: the run's :class:`trl_soup.SOUPConfig` (read: seed, T, the refresh policy, prefetch, pool size).
        process_index: this rank (seeds the truncation RNG: ``seed + rank``).
        metrics: where ``soup/`` training metrics are appended (``name -> list``; the trainer's ``_metrics["train"]``).

    :meth:`attach` then gives it what writes the prefixes (backends built after the session may read its counter).
    """

    def __init__(self, args, process_index: int, metrics: MutableMapping[str, list]):
        self.args, self.process_index, self.metrics = args, process_index, metrics
        self.behavior = None  # what writes the prefixes; None for T = 1 (no relay batch)
        self.generation_batch_index = 0  # generation batches produced so far in training (the refresh counter)
        self.schedule = RefreshSchedule()
        self.prefix_generator = torch.Generator().manual_seed(args.seed + process_index)
        self.prefetcher = None  # behavior samples of the next relay batches, drawn in the background

    def attach(self, behavior) -> RelaySession:
        """Use ``behavior`` (a :class:`trl_soup.behavior.BehaviorBackend`, or None) for the prefixes; with
        ``behavior_prefetch > 0`` its samples are drawn ahead on a background thread."""
        self.behavior = behavior
        if behavior is not None and self.args.behavior_prefetch > 0:
            self.prefetcher = BehaviorPrefetcher(
                lambda ids, budget, index: behavior.sample(ids, budget, generation_batch_index=index),
                self.args.behavior_prefetch,
            )
        return self

    @property
    def decode_budget(self) -> int:
        """Tokens the behavior copy decodes per response (0: the strategy needs none)."""
        return behavior_decode_budget(self.args.prefix_strategy, self.args)

    def begin_batch(self) -> int:
        """Before a training generation batch: refresh the copy when the schedule says so (timed, logged with the
        reason and the staleness the decision saw). Returns the batch's age: generation batches since the refresh
        (0: this batch is on-policy)."""
        index, schedule = self.generation_batch_index, self.schedule
        reason = schedule.decide(index, self.args)
        stats = schedule.stats(index)  # what the decision saw (the last relay batch's)
        for name in REFRESH_REASONS:  # 0/1 each: averaged over steps or ranks, the fraction of batches
            self.metrics[f"soup/refresh/{name}"].append(float(reason == name))
        if stats.staleness is not None:
            self.metrics["soup/staleness"].append(stats.staleness)
        if reason != "none":
            if self.prefetcher is not None:
                self.prefetcher.clear()  # nothing sampled with the old snapshot may outlive it
            start = time.perf_counter()
            self.behavior.refresh()
            self.metrics["soup/refresh_time"].append(time.perf_counter() - start)
            schedule.refreshed(index)
        return index - schedule.last_refresh

    def end_batch(self) -> None:
        """After a training generation batch."""
        self.generation_batch_index += 1

    def prefetch(self, inputs, prompt_ids: Callable, step: int, total_batches: int, every: int) -> None:
        """Request the behavior responses of the next relay batches of this refresh window, at most
        ``behavior_prefetch`` generation batches ahead (:func:`trl_soup.behavior.prefetch.prefetch_schedule`: TRL
        generates when ``step % every == 0``; ``total_batches`` in the run); ``prompt_ids(batch)`` tokenizes a
        batch read ahead from the epoch iterator."""
        if self.prefetcher is None or self.decode_budget <= 0:
            return
        index = self.generation_batch_index
        window_end = self.schedule.window_end(self.args.behavior_refresh_interval)
        schedule = prefetch_schedule(index, window_end, self.args.behavior_prefetch, every, step, total=total_batches)
        self.prefetcher.request_ahead(inputs, schedule, prompt_ids, self.decode_budget, index)

    def behavior_samples(self, prompt_ids: list[list[int]], rows=None):
        """The behavior responses of this generation batch: the prefetched ones when they were requested for this
        batch with the same prompts and budget, else sampled now (``rows``, the batch's dataset examples, reach the
        backend only if it declares ``needs_rows``). Logs the time the step waited for them."""
        start, samples, budget = time.perf_counter(), None, self.decode_budget
        if self.prefetcher is not None:
            samples = self.prefetcher.take(self.generation_batch_index, prompt_ids, budget)
            self.metrics["soup/behavior_prefetch_hit"].append(float(samples is not None))
        if samples is None:
            samples = sample_from(self.behavior, prompt_ids, budget, self.generation_batch_index, rows=rows)
        self.metrics["soup/behavior_wait_time"].append(time.perf_counter() - start)
        return samples

    def save(self, checkpoint: str, should_save: bool) -> None:
        """Every rank: its truncation RNG and (collectively, under ZeRO-3) the behavior snapshot, which is needed only
        mid-window (when the next batch refreshes for sure, T reached, it is not; a pool keeps what survives the next
        refresh); the main process (``should_save``) writes :class:`trl_soup.state.SOUPState`."""
        T, last = self.args.behavior_refresh_interval, self.schedule.last_refresh
        mid_window = last is not None and self.generation_batch_index - last < T
        os.makedirs(checkpoint, exist_ok=True)  # another rank may get here before the main process created it
        save_rng_state(checkpoint, self.process_index, self.prefix_generator)
        snapshot = os.path.join(checkpoint, SNAPSHOT_DIR)
        saved = self.behavior is not None and self.behavior.checkpoint_snapshot(snapshot, mid_window)
        state = SOUPState(
            self.generation_batch_index, T, saved, self.schedule.state_dict(), self.args.behavior_pool_size
        )
        if should_save:
            state.save(checkpoint)

    def load(self, checkpoint: str) -> None:
        """Resume from ``checkpoint``: the counter, the schedule, the snapshot if saved, this rank's RNG."""
        state = SOUPState.load(checkpoint, self.args.behavior_refresh_interval, self.args.behavior_pool_size)
        self.generation_batch_index = state.generation_batch_index
        self.schedule = state.schedule()
        if state.behavior_snapshot:
            self.behavior.load_snapshot(os.path.join(checkpoint, SNAPSHOT_DIR))
        load_rng_state(checkpoint, self.process_index, self.prefix_generator)

    def close(self) -> None:
        """Cancel queued prefetch requests and end the background thread."""
        if self.prefetcher is not None:
            self.prefetcher.close()
