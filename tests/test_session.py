"""The relay session (trl_soup.session.RelaySession) without a model: refresh decisions and their metrics, the
generation-batch counter, behavior sampling, and the checkpoint round trip, against a recording fake backend."""

from __future__ import annotations

import os
from collections import defaultdict

import torch

from trl_soup import SOUPConfig
from trl_soup.session import RelaySession
from trl_soup.state import SNAPSHOT_DIR, SOUP_STATE_FILE, rng_state_path


class RecordingBackend:
    """What the session calls on a behavior backend, recorded."""

    needs_rows = True  # it records the dataset rows it gets

    def __init__(self):
        self.refreshes, self.sampled, self.snapshots, self.loaded = 0, [], [], []

    def refresh(self):
        self.refreshes += 1

    def sample(self, prompt_ids, max_new_tokens, generation_batch_index=None, stream=0, rows=None):
        self.sampled.append((prompt_ids, max_new_tokens, generation_batch_index, rows))
        return f"samples of batch {generation_batch_index}"

    def checkpoint_snapshot(self, path, mid_window):
        self.snapshots.append((path, mid_window))
        return mid_window

    def load_snapshot(self, path):
        self.loaded.append(path)


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_completion_length=24, seed=3)
    return SOUPConfig(**{**values, "behavior_refresh_interval": 4, **overrides})


def _run(session, batches):
    ages = []
    for _ in range(batches):
        ages.append(session.begin_batch())
        session.end_batch()
    return ages


def test_fixed_window_refreshes_every_T_batches_with_one_metric_per_reason(tmp_path):
    metrics = defaultdict(list)
    backend = RecordingBackend()
    session = RelaySession(_args(tmp_path), 0, metrics).attach(backend)
    assert _run(session, 9) == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert backend.refreshes == 3 and session.generation_batch_index == 9
    assert metrics["soup/refresh/start"] == [1.0] + [0.0] * 8
    assert metrics["soup/refresh/interval"] == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert metrics["soup/refresh/policy"] == [0.0] * 9
    assert len(metrics["soup/refresh_time"]) == 3 and all(t >= 0 for t in metrics["soup/refresh_time"])


def test_behavior_samples_come_from_the_backend_for_the_current_batch(tmp_path):
    metrics = defaultdict(list)
    backend = RecordingBackend()
    session = RelaySession(_args(tmp_path, prefix_ratio=0.5), 0, metrics).attach(backend)
    _run(session, 2)
    rows = [{"prompt": "p"}]
    assert session.behavior_samples([[5, 6]], rows=rows) == "samples of batch 2"
    # ratio truncation cuts a full response: the copy decodes the whole completion budget
    assert backend.sampled == [([[5, 6]], 24, 2, rows)]
    assert session.decode_budget == 24
    assert len(metrics["soup/behavior_wait_time"]) == 1 and "soup/behavior_prefetch_hit" not in metrics


def test_fixed_budget_decodes_only_the_prefix(tmp_path):
    session = RelaySession(_args(tmp_path, prefix_strategy="fixed_budget", prefix_budget=5), 0, defaultdict(list))
    assert session.decode_budget == 5


def test_truncation_rng_is_seeded_per_rank(tmp_path):
    first = RelaySession(_args(tmp_path), 0, defaultdict(list)).prefix_generator.get_state()
    again = RelaySession(_args(tmp_path), 0, defaultdict(list)).prefix_generator.get_state()
    other_rank = RelaySession(_args(tmp_path), 1, defaultdict(list)).prefix_generator.get_state()
    assert torch.equal(first, again) and not torch.equal(first, other_rank)


def test_checkpoint_round_trip_mid_window(tmp_path):
    args = _args(tmp_path / "run")
    backend = RecordingBackend()
    session = RelaySession(args, 0, defaultdict(list)).attach(backend)
    _run(session, 6)  # refreshed at 4: batches 4 and 5 drawn from the snapshot, 6 continues the window
    torch.rand(3, generator=session.prefix_generator)  # the truncation RNG has moved
    checkpoint = str(tmp_path / "checkpoint-6")
    session.save(checkpoint, should_save=True)
    assert backend.snapshots == [(os.path.join(checkpoint, SNAPSHOT_DIR), True)]
    assert os.path.exists(os.path.join(checkpoint, SOUP_STATE_FILE)) and os.path.exists(rng_state_path(checkpoint, 0))

    resumed_backend = RecordingBackend()
    resumed = RelaySession(args, 0, defaultdict(list)).attach(resumed_backend)
    resumed.load(checkpoint)
    assert resumed.generation_batch_index == 6 and resumed.schedule == session.schedule
    assert resumed_backend.loaded == [os.path.join(checkpoint, SNAPSHOT_DIR)]
    assert torch.equal(resumed.prefix_generator.get_state(), session.prefix_generator.get_state())
    # the same decisions from here: batches 6, 7 continue the window, 8 refreshes
    assert _run(resumed, 3) == _run(session, 3) == [2, 3, 0]
    assert resumed_backend.refreshes == 1


def test_checkpoint_at_the_window_end_skips_the_snapshot(tmp_path):
    """When the next batch refreshes for sure (T reached), the snapshot is not needed and not loaded back."""
    args = _args(tmp_path / "run")
    backend = RecordingBackend()
    session = RelaySession(args, 0, defaultdict(list)).attach(backend)
    _run(session, 4)  # refreshed at 0; batch 4 refreshes
    checkpoint = str(tmp_path / "checkpoint-4")
    session.save(checkpoint, should_save=True)
    assert backend.snapshots == [(os.path.join(checkpoint, SNAPSHOT_DIR), False)]
    resumed_backend = RecordingBackend()
    RelaySession(args, 0, defaultdict(list)).attach(resumed_backend).load(checkpoint)
    assert resumed_backend.loaded == []


def test_only_the_main_process_writes_the_state(tmp_path):
    session = RelaySession(_args(tmp_path / "run"), 1, defaultdict(list)).attach(RecordingBackend())
    _run(session, 2)
    checkpoint = str(tmp_path / "checkpoint-2")
    session.save(checkpoint, should_save=False)
    assert not os.path.exists(os.path.join(checkpoint, SOUP_STATE_FILE))
    assert os.path.exists(rng_state_path(checkpoint, 1))  # every rank writes its own RNG


def test_no_behavior_no_prefetcher_and_close_is_safe(tmp_path):
    server = dict(behavior_backend="vllm_server", behavior_server_base_url="http://127.0.0.1:8001")
    args = _args(tmp_path, behavior_prefetch=2, **server)
    session = RelaySession(args, 0, defaultdict(list)).attach(None)
    assert session.behavior is None and session.prefetcher is None
    session.close()
    with_backend = RelaySession(args, 0, defaultdict(list)).attach(RecordingBackend())
    assert with_backend.prefetcher is not None
    with_backend.close()
