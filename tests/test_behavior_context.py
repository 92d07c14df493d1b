"""The behavior layer built from a BehaviorContext (trl_soup.behavior.context), without a trainer: a local backend
samples deterministically per (seed, batch, rank, stream) with exact log-probs, ``from_trainer`` reads what the trainer
holds, ``generation_batch_index`` is required, ``rows`` reach only ``needs_rows`` backends, and the one padding helper
pads and flags EOS."""

from __future__ import annotations

import inspect
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from testing_utils import reference_logps, soup_args
from transformers import GenerationConfig

from trl_soup.behavior import BehaviorPool, LocalBehaviorBackend
from trl_soup.behavior.base import (
    BehaviorBackend,
    Scorer,
    ended_with_eos,
    padded_rows,
    sample_from,
    samples_from_token_rows,
)
from trl_soup.behavior.context import BehaviorContext, SamplingSettings
from trl_soup.behavior.prefetch import behavior_sampling_seed
from trl_soup.behavior.sources import DatasetSource, FrozenSource, SourceMixture, empty_samples
from trl_soup.session import RelaySession

TEMPERATURE = 1.3


def _score(model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False):
    """A ScoreFunction of its own: a plain forward, temperature-scaled log-softmax of the last tokens."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logps = torch.log_softmax(logits[:, -logits_to_keep - 1 : -1] / TEMPERATURE, dim=-1)
    per_token = logps.gather(-1, input_ids[:, -logits_to_keep:].unsqueeze(-1)).squeeze(-1)
    return per_token, -(logps.exp() * logps).sum(-1) if compute_entropy else None, None


def _accelerator(rank: int = 0, zero_stage: int | None = None):
    plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(
        device=torch.device("cpu"),
        process_index=rank,
        state=SimpleNamespace(deepspeed_plugin=plugin),
        unwrap_model=lambda model: model,
        is_main_process=True,
    )


def _context(tmp_path, tokenizer, model, rank: int = 0, zero_stage: int | None = None, **overrides):
    """A context built by hand: no trainer anywhere."""
    args = soup_args(tmp_path, temperature=TEMPERATURE, **overrides)
    sampling = SamplingSettings(
        temperature=TEMPERATURE,
        max_completion_length=args.max_completion_length,
        eos_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    accelerator = _accelerator(rank, zero_stage)
    return BehaviorContext(args, tokenizer, accelerator, model=lambda: model, sampling=sampling, score=_score)


def _prompts(tokenizer, texts=("1+2=", "3+4=", "5+6=", "7+8=")):
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]  # equal lengths: no padding


def _rows(samples) -> list[list[int]]:
    return [samples.completion_ids[i, samples.mask[i].bool()].tolist() for i in range(samples.mask.size(0))]


def test_local_backend_from_a_context_samples_per_seed_batch_rank_and_stream(tmp_path, tokenizer, make_model):
    model = make_model(seed=1)
    backend = LocalBehaviorBackend(_context(tmp_path, tokenizer, model))
    prompts = _prompts(tokenizer)
    first = backend.sample(prompts, 8, 3)
    assert _rows(backend.sample(prompts, 8, 3)) == _rows(first)  # the same sample whenever it is drawn
    assert _rows(backend.sample(prompts, 8, 4)) != _rows(first)  # another batch
    assert _rows(backend.sample(prompts, 8, 3, stream=1)) != _rows(first)  # another stream
    other_rank = LocalBehaviorBackend(_context(tmp_path, tokenizer, model, rank=1))
    assert other_rank.context.sampling_seed(3, 2) == behavior_sampling_seed(0, 3, 1, 2)
    assert _rows(other_rank.sample(prompts, 8, 3)) != _rows(first)
    other_seed = LocalBehaviorBackend(_context(tmp_path, tokenizer, model, seed=7))
    assert _rows(other_seed.sample(prompts, 8, 3)) != _rows(first)
    # The log-probs and entropies equal an independent forward of the snapshot (its weights are the model's).
    prompt_ids = torch.tensor(prompts)
    expected, entropy = reference_logps(
        backend.snapshot, prompt_ids, torch.ones_like(prompt_ids), first.completion_ids, first.mask, TEMPERATURE
    )
    mask = first.mask.bool()
    torch.testing.assert_close(first.per_token_logps[mask], expected[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.entropies[mask], entropy[mask], atol=1e-5, rtol=1e-5)
    # The scoring interface gives the same values through the context's score function.
    assert isinstance(backend, Scorer)
    logps, _ = backend.score(prompts, _rows(first))
    torch.testing.assert_close(logps[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_from_trainer_reads_what_the_trainer_holds(tmp_path, make_trainer):
    args = soup_args(tmp_path, behavior_refresh_interval=2, top_p=0.9, top_k=20, repetition_penalty=1.1)
    trainer = make_trainer(args)
    context = BehaviorContext.from_trainer(trainer)
    assert context.args is trainer.args and context.accelerator is trainer.accelerator
    assert context.tokenizer is trainer.processing_class and context.model() is trainer.model
    assert context.learner() is trainer.accelerator.unwrap_model(trainer.model)
    assert context.generation_model() is trainer.model_wrapped
    assert context.score == trainer._get_per_token_logps_and_entropies
    sampling = context.sampling
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_completion_length"):
        assert getattr(sampling, name) == getattr(trainer, name), name
    assert list(sampling.eos_token_ids) == trainer.eos_token_ids and sampling.pad_to_multiple_of is None
    assert sampling.pad_token_id == trainer.processing_class.pad_token_id
    # What changes during a run is read at each use: the generation settings, the batch counter, the model.
    kwargs, config = sampling.generation()
    assert kwargs is trainer.generation_kwargs and config is trainer.generation_config
    trainer.generation_config = GenerationConfig(top_k=3)
    assert sampling.generation()[1] is trainer.generation_config
    trainer.relay_session.end_batch()
    assert context.generation_batch_index() == trainer.generation_batch_index == 1
    trainer.model = torch.nn.Linear(1, 1)
    assert context.model() is trainer.model
    # The trainer's own backend was built from such a context.
    assert trainer.behavior.context.args is trainer.args


def test_sampling_settings_without_transformers_settings_build_them():
    """With vLLM TRL builds no transformers settings: the local copy samples with ones built from the values."""
    sampling = SamplingSettings(
        temperature=0.7, max_completion_length=12, eos_token_ids=(1, 5), pad_token_id=0, top_k=4, min_p=0.1
    )
    kwargs, config = sampling.generation()
    assert kwargs["eos_token_id"] == [1, 5] and kwargs["do_sample"] and kwargs["max_new_tokens"] == 12
    assert (config.temperature, config.top_k, config.min_p, config.pad_token_id) == (0.7, 4, 0.1, 0)


class _Recording(FrozenSource, BehaviorBackend):
    """A source that records what it was called with."""

    def __init__(self, needs_rows: bool):
        self.needs_rows, self.calls = needs_rows, []

    def sample(self, prompt_ids, max_new_tokens, generation_batch_index, stream=0, rows=None):
        self.calls.append((generation_batch_index, stream, rows))
        return empty_samples(len(prompt_ids), 0, "cpu")


def test_sample_without_generation_batch_index_is_a_type_error(tmp_path, tokenizer, make_model):
    import trl_soup.behavior.sources  # noqa: F401 (every backend class is defined)

    def subclasses(cls):
        return {cls} | {s for sub in cls.__subclasses__() for s in subclasses(sub)}

    backends = [cls for cls in subclasses(BehaviorBackend) if cls.__module__.startswith("trl_soup.")]
    assert len(backends) >= 8
    for cls in [*backends, _Recording]:
        parameter = inspect.signature(cls.sample).parameters["generation_batch_index"]
        assert parameter.default is inspect.Parameter.empty, cls
    backend = LocalBehaviorBackend(_context(tmp_path, tokenizer, make_model(seed=0)))
    with pytest.raises(TypeError, match="generation_batch_index"):
        backend.sample(_prompts(tokenizer), 4)


def test_rows_reach_only_backends_that_need_them(tmp_path, tokenizer, make_model):
    prompts, examples = _prompts(tokenizer)[:2], [{"ref": None}, {"ref": None}]
    for needs_rows in (False, True):  # the relay session
        backend = _Recording(needs_rows)
        session = RelaySession(soup_args(tmp_path, behavior_refresh_interval=4), 0, defaultdict(list)).attach(backend)
        session.behavior_samples(prompts, rows=examples)
        assert backend.calls == [(0, 0, examples if needs_rows else None)]
    # The source mixture and the dataset source's fallback (rows without a reference).
    args = SimpleNamespace(
        seed=0,
        prefix_source_weights={"on_policy": 1.0, "dataset": 1.0},
        prefix_dataset_column="ref",
        prefix_logps_column="ref_logps",  # no scorer model is built
        prefix_scorer_model=None,
    )
    sampling = SamplingSettings(1.0, 8, (tokenizer.eos_token_id,), tokenizer.pad_token_id)
    context = BehaviorContext(args, tokenizer, _accelerator(), model=lambda: None, sampling=sampling, score=_score)
    fallback, plain, needing = _Recording(False), _Recording(False), _Recording(True)
    dataset = DatasetSource(context, fallback)
    many = [{"ref": None, "i": i} for i in range(16)]
    dataset.sample(prompts * 8, 4, 2, stream=9, rows=many)
    assert fallback.calls == [(2, 9, None)]
    mixture = SourceMixture(context, {"on_policy": plain, "dataset": needing}, behavior=None)
    samples = mixture.sample(prompts * 8, 4, 2, rows=many)
    chosen = [many[i] for i, s in enumerate(samples.source_ids.tolist()) if mixture.names[s] == "dataset"]
    assert chosen and len(chosen) < 16  # both sources wrote rows
    assert [call[2] for call in plain.calls] == [None] and needing.calls[0][2] == chosen
    sample_from(needing, prompts, 4, 5, rows=examples)
    sample_from(plain, prompts, 4, 5, rows=examples)
    assert needing.calls[-1] == (5, 0, examples) and plain.calls[-1] == (5, 0, None)


def test_a_pool_honours_its_stream(tmp_path, tokenizer, make_model):
    """At stream 0 a pool of one refreshed member draws the member's own samples; another stream draws others,
    deterministically."""
    context = _context(tmp_path, tokenizer, make_model(seed=2))
    members = [LocalBehaviorBackend(context, member=slot) for slot in range(2)]
    pool = BehaviorPool(context, members)
    pool.refresh()
    prompts = _prompts(tokenizer)
    at_zero = pool.sample(prompts, 8, 3)
    assert _rows(at_zero) == _rows(members[pool.age_order()[0]].sample(prompts, 8, 3, stream=0))
    at_five = pool.sample(prompts, 8, 3, stream=5)
    assert _rows(at_five) != _rows(at_zero) and _rows(pool.sample(prompts, 8, 3, stream=5)) == _rows(at_five)


def test_one_padding_helper_pads_and_flags_eos():
    ids, mask = padded_rows([[5, 6, 1], [7], []], 0)
    assert ids.tolist() == [[5, 6, 1], [7, 0, 0], [0, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    tops, _ = padded_rows([[[-0.1, -2.0]], []], float("-inf"), torch.float32, trailing=(2,))
    assert tops.shape == (2, 1, 2) and tops[1].isinf().all() and tops[0, 0].tolist() == pytest.approx([-0.1, -2.0])
    assert padded_rows([[], []], 3)[0].tolist() == [[3], [3]]  # at least one column
    assert ended_with_eos([[5, 6, 1], [7], [], [1, 5], [4, 2]], (1, 2)).tolist() == [True, False, False, False, True]
    logps, _ = padded_rows([[-0.5, -0.25, -1.0], [-2.0]], 0.0, torch.float32)
    samples = samples_from_token_rows([[5, 6, 1], [7]], logps, torch.ones_like(logps), (1,), 0, "cpu")
    assert samples.completion_ids.tolist() == [[5, 6, 1], [7, 0, 0]] and samples.lengths.tolist() == [3, 1]
    assert samples.per_token_logps.tolist() == [[-0.5, -0.25, -1.0], [-2.0, 0.0, 0.0]]
    assert samples.entropies.tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert samples.ended_with_eos.tolist() == [True, False]


def test_peft_under_zero3_is_refused_with_the_checks_message(tmp_path, tokenizer, make_model):
    peft = pytest.importorskip("peft")
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
    model = peft.get_peft_model(make_model(seed=0), lora)
    with pytest.raises(ValueError, match=r"^peft_config with behavior_backend='local' is not supported under DeepSp"):
        LocalBehaviorBackend(_context(tmp_path, tokenizer, model, zero_stage=3))
