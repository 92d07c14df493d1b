"""Prefetched behavior samples (trl_soup.behavior.prefetch): they change no sample and never cross a refresh.

Fast tier: the seeding function, the look-ahead iterator, the bounded queue, config validation, and the local
backend's behavior stream (independent of the global RNG, which it leaves untouched). Slow tier, against a real vLLM
server on CPU (one start for the module): a run with prefetching produces the same trajectories and losses as one
without, every relay batch is served from the queue, no request crosses a refresh, and a run resumed mid-window
with prefetching reproduces the uninterrupted one.
"""

from __future__ import annotations

import os
import threading

import pytest
import torch
from testing_utils import RecordingTrainer, digit_share_reward, require_vllm, server_args, soup_args
from vllm_server import start_vllm_server

from trl_soup import SOUPConfig
from trl_soup.behavior.prefetch import THREAD_NAME, BehaviorPrefetcher, LookAheadIterator, behavior_sampling_seed
from trl_soup.toy import build_tiny_model, build_tokenizer, save_toy_model

# ------------------------------------------------------------------------------------------------ pure pieces


def test_sampling_seed_depends_only_on_seed_batch_and_rank():
    seeds = {behavior_sampling_seed(s, b, r) for s in range(3) for b in range(50) for r in range(8)}
    assert len(seeds) == 3 * 50 * 8  # distinct streams for every (seed, batch, rank) a run uses
    torch.manual_seed(123)
    before = behavior_sampling_seed(0, 7, 1)
    torch.rand(10)  # the global RNG moving on changes nothing
    assert behavior_sampling_seed(0, 7, 1) == before == 7 * 7_919 + 1


def test_lookahead_keeps_order_and_locates_batches():
    items = [[{"prompt": str(i)}] for i in range(6)]
    it = LookAheadIterator(iter(items))
    first = next(it)
    assert first is items[0] and it.position(first) == 0
    assert it.peek(3) is items[3]  # read ahead ...
    assert [next(it) for _ in range(4)] == items[1:5]  # ... without changing what the consumer gets
    assert it.position(items[4]) == 4 and it.position([{"prompt": "4"}]) is None  # identity, not equality
    assert it.peek(2) is None  # already handed out
    assert it.peek(5) is items[5] and it.peek(6) is None  # past the end
    assert next(it) is items[5]
    with pytest.raises(StopIteration):
        next(it)


def test_prefetcher_is_bounded_and_matches_prompts_and_budget():
    calls = []

    def sample(prompt_ids, budget, index):
        calls.append(index)
        return {"ids": prompt_ids, "budget": budget, "index": index}

    prefetcher = BehaviorPrefetcher(sample, max_ahead=2)
    assert prefetcher.submit(1, [[1, 2]], 5, current=0)
    assert prefetcher.submit(2, [[3]], 5, current=0)
    assert not prefetcher.submit(3, [[4]], 5, current=0)  # beyond the bound
    assert not prefetcher.submit(0, [[4]], 5, current=0)  # not ahead
    assert prefetcher.requested == [(0, 1), (0, 2)]
    assert prefetcher.take(1, [[1, 2]], 5) == {"ids": [[1, 2]], "budget": 5, "index": 1}
    assert prefetcher.take(2, [[3]], 6) is None  # another budget: not this batch's sample
    assert prefetcher.submit(3, [[4]], 5, current=2)
    assert prefetcher.take(3, [[9]], 5) is None  # other prompts
    assert len(prefetcher) == 0
    prefetcher.submit(5, [[1]], 5, current=4)
    assert prefetcher.take(6, [[1]], 5) is None and len(prefetcher) == 0  # an earlier batch's entry is dropped

    def failing(prompt_ids, budget, index):
        raise RuntimeError("server gone")

    broken = BehaviorPrefetcher(failing, max_ahead=1)
    broken.submit(1, [[1]], 5, current=0)
    with pytest.raises(RuntimeError, match="server gone"):  # raised in the thread that uses the sample
        broken.take(1, [[1]], 5)
    prefetcher.close()
    broken.close()
    with pytest.raises(ValueError, match="max_ahead"):
        BehaviorPrefetcher(sample, max_ahead=0)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


def test_close_cancels_queued_requests_and_ends_the_thread():
    started, release, calls = threading.Event(), threading.Event(), []

    def sample(prompt_ids, budget, index):
        calls.append(index)
        started.set()
        assert release.wait(timeout=30)
        return index

    prefetcher = BehaviorPrefetcher(sample, max_ahead=3)
    for index in (1, 2, 3):
        assert prefetcher.submit(index, [[index]], 4, current=0)
    assert started.wait(timeout=30) and len(_prefetch_threads()) == 1  # request 1 in flight, 2 and 3 queued
    closer = threading.Thread(target=prefetcher.close)
    closer.start()
    closer.join(timeout=0.5)
    assert closer.is_alive()  # close waits for the request in flight ...
    release.set()
    closer.join(timeout=30)
    assert not closer.is_alive()
    assert calls == [1]  # ... but the queued ones never ran
    assert len(prefetcher) == 0 and not _prefetch_threads()
    # Usable again after close (a second train() call): a new thread serves new requests.
    assert prefetcher.submit(5, [[5]], 4, current=4)
    assert prefetcher.take(5, [[5]], 4) == 5
    prefetcher.close()
    assert not _prefetch_threads()


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_config_refuses_bad_prefetch(tmp_path, value):
    with pytest.raises(ValueError, match=r"behavior_prefetch=.*integer >= 0"):
        SOUPConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to="none",
            behavior_backend="vllm_server",
            behavior_prefetch=value,
        )


def test_config_refuses_prefetch_with_local_backend(tmp_path):
    with pytest.raises(ValueError, match=r"behavior_prefetch=2 needs behavior_backend='vllm_server'.*Allowed"):
        SOUPConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", behavior_prefetch=2)
    assert SOUPConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none").behavior_prefetch == 0


def test_local_behavior_stream_is_its_own(tmp_path, tokenizer, prompt_dataset, make_trainer):
    """The local copy samples the same responses for a generation batch whatever the global RNG state, and leaves
    that state untouched: the premise that makes prefetched, synchronous and resumed samples equal."""
    trainer = make_trainer(soup_args(tmp_path, behavior_refresh_interval=4))
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompt_dataset["prompt"][:8]]
    torch.manual_seed(1)
    first = trainer.behavior.sample(prompts, 10, generation_batch_index=3)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    again = trainer.behavior.sample(prompts, 10, generation_batch_index=3)
    assert torch.equal(torch.get_rng_state(), state)  # the learner's stream did not move
    assert torch.equal(first.completion_ids, again.completion_ids)
    torch.testing.assert_close(first.per_token_logps, again.per_token_logps, rtol=0, atol=0)
    other = trainer.behavior.sample(prompts, 10, generation_batch_index=5)
    assert not torch.equal(first.completion_ids, other.completion_ids)  # another batch, another stream


# ------------------------------------------------------------------------------------------------ vLLM server runs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tokenizer = build_tokenizer()
    model_dir = save_toy_model(
        tmp_path_factory.mktemp("served") / "untied", model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer
    )
    with start_vllm_server(model_dir) as url:
        yield url


# The trajectories and SOUP fields each generation batch is compared on.
BATCH_KEYS = (
    "prompt_ids",
    "completion_ids",
    "completion_mask",
    "prefix_mask",
    "behavior_per_token_logps",
    "old_per_token_logps",
    "advantages",
)


def _server_args(tmp_path, url, **overrides):
    return server_args(tmp_path, url, **{"behavior_refresh_interval": 4, "max_steps": 6, **overrides})


def _train(tmp_path, name, url, make_trainer, resume=None, **overrides):
    args = _server_args(tmp_path / name, url, **overrides)
    trainer = make_trainer(args, trainer_class=RecordingTrainer, batch_keys=BATCH_KEYS)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _logged(trainer, key):
    return {h["step"]: h[key] for h in trainer.state.log_history if key in h}


def _assert_same_batches(got, expected):
    """The same generation batches (records of RecordingTrainer), with the same BATCH_KEYS tensors."""
    assert [r["index"] for r in got] == [r["index"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["batch"].keys() == b["batch"].keys()
        for key in a["batch"]:
            torch.testing.assert_close(
                a["batch"][key], b["batch"][key], rtol=0, atol=0, msg=f"batch {a['index']}: {key}"
            )


@require_vllm
@pytest.mark.slow
@pytest.mark.parametrize("ahead", [1, 3])
def test_prefetch_changes_no_sample(tmp_path, server, make_trainer, ahead):
    # T = 4, 6 generation batches: windows {0 (refresh), 1, 2, 3} and {4 (refresh), 5}.
    baseline = _train(tmp_path, "plain", server, make_trainer)
    prefetched = _train(tmp_path, "prefetch", server, make_trainer, behavior_prefetch=ahead)

    _assert_same_batches(prefetched.records, baseline.records)
    for key in ("loss", "reward", "soup/log_ratio/prefix_abs_mean"):
        assert _logged(prefetched, key) == _logged(baseline, key), key
    assert any(b["prefix_mask"].any() for b in prefetched.batches)  # relay batches really were sampled

    # Every request stays inside the window of the batch that made it, and within the bound.
    requested = prefetched.behavior_prefetcher.requested
    assert requested, "nothing was prefetched"
    for current, index in requested:
        assert index // 4 == current // 4 and index % 4 != 0 and 0 < index - current <= ahead, (current, index)
    assert sorted(index for _, index in requested) == [1, 2, 3, 5]  # every relay batch, each once
    # ... and every relay batch was served from the queue.
    assert set(_logged(prefetched, "soup/behavior_prefetch_hit").values()) == {1.0}
    assert "soup/behavior_prefetch_hit" not in str(baseline.state.log_history)


@require_vllm
@pytest.mark.slow
def test_resume_with_prefetch_regenerates_identically(tmp_path, server, make_trainer):
    # The checkpoint at step 2 is mid-window: batches 2 and 3 were already requested (ahead=2) when it was written.
    # The queue is not saved; after resuming they are requested again and must come out the same.
    save = dict(save_strategy="steps", save_steps=2, max_steps=4, behavior_prefetch=2)
    full = _train(tmp_path, "full", server, make_trainer, **save)
    assert (1, 3) in full.behavior_prefetcher.requested or (0, 2) in full.behavior_prefetcher.requested
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-2")
    resumed = _train(tmp_path, "resumed", server, make_trainer, resume=checkpoint, **save)
    _assert_same_batches(resumed.records, [r for r in full.records if r["index"] >= 2])
    for key in ("loss", "reward"):
        expected, got = _logged(full, key), _logged(resumed, key)
        assert {3, 4} <= set(got)
        for step in (3, 4):
            assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), (key, step)


@require_vllm
@pytest.mark.slow
def test_no_prefetch_thread_outlives_train(tmp_path, server, make_trainer):
    """train() closes the prefetcher when it returns and when it raises (here: a reward function failing at the third
    generation batch, while later batches of the window are already requested)."""
    calls = []

    def failing_reward(prompts, completions, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("reward service down")
        return digit_share_reward(prompts, completions)

    args = _server_args(tmp_path, server, behavior_prefetch=2)
    trainer = make_trainer(args, reward_funcs=failing_reward)
    with pytest.raises(RuntimeError, match="reward service down"):
        trainer.train()
    assert trainer.behavior_prefetcher.requested  # requests were made before the failure
    assert len(trainer.behavior_prefetcher) == 0 and not _prefetch_threads()

    calls.clear()
    calls.extend([1] * 10)  # the reward works again: a second train() starts over and ends cleanly
    trainer.train()
    assert not _prefetch_threads()
