"""Prefix sources other than the historical copy (:mod:`trl_soup.sources`), and the mixture that draws each row's.

- :class:`DatasetSource`: the reference completion of each row's dataset example; denominators from a log-prob
  column or a frozen scorer (the initial policy, or ``prefix_scorer_model``);
- :class:`TeacherSource`: a teacher served by its own vLLM server, never refreshed;
- :class:`OnPolicySource`: no prefix;
- :class:`SourceMixture`: each row from the source ``prefix_source_weights`` draws for it (seeded per generation
  batch and rank), every source sampling its rows in one call.

Each is a :class:`~trl_soup.behavior.base.BehaviorBackend`, so the relay (cut, continuation, Eq. 5) is the same for
every source: a row's prefix denominators are the log-probs its source reports.
"""

from __future__ import annotations

import torch

from .._compat import pad
from ..sources import (
    BUILTIN_SOURCES,
    choose_sources,
    reference_row_logps,
    reference_token_ids,
    registered_source_factory,
    source_names,
    source_weights,
)
from .base import BehaviorBackend, BehaviorSamples
from .local import LocalBehaviorBackend
from .pool import sample_in_groups
from .prefetch import behavior_sampling_seed
from .vllm_server import VLLMServerBehaviorBackend

SCORER_ADAPTER = "prefix_scorer"
SOURCE_STREAM = 1_000  # seed streams of the sources (behavior keeps stream 0, a pool's members 0..K-1)

__all__ = [
    "DatasetSource",
    "NamedScorer",
    "OnPolicySource",
    "SourceMixture",
    "TeacherSource",
    "build_builtin_source",
    "build_prefix_sources",
]


def empty_samples(num_rows: int, pad_token_id: int, device) -> BehaviorSamples:
    """Rows without a prefix (length 0): the current policy writes them whole."""
    zeros = torch.zeros(num_rows, 1, device=device)
    return BehaviorSamples(
        completion_ids=torch.full((num_rows, 1), pad_token_id, dtype=torch.long, device=device),
        mask=zeros.long(),
        per_token_logps=zeros.clone(),
        entropies=zeros.clone(),
        ended_with_eos=torch.zeros(num_rows, dtype=torch.bool, device=device),
    )


class _Frozen(BehaviorBackend):
    """A source that SOUP never refreshes and that has nothing to checkpoint."""

    def refresh(self) -> None:
        return None

    def save_snapshot(self, directory: str) -> None:
        return None

    def load_snapshot(self, directory: str) -> None:
        return None

    def checkpoint_snapshot(self, directory: str, mid_window: bool) -> bool:
        return False


class OnPolicySource(_Frozen):
    """No prefix: every row of this source is written by the current policy (for ``prefix_source_weights``)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def sample(self, prompt_ids, max_new_tokens, generation_batch_index=None, stream=0, rows=None):
        trainer = self.trainer
        return empty_samples(len(prompt_ids), trainer._tokenizer.pad_token_id, trainer.accelerator.device)


class NamedScorer(LocalBehaviorBackend):
    """A frozen model loaded from ``prefix_scorer_model`` that scores dataset references (never samples). It must
    share the learner's tokenizer: the vocabulary size and a probe's token ids are checked."""

    def __init__(self, trainer, path: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.trainer, self.adapter_name = trainer, None
        learner = trainer.accelerator.unwrap_model(trainer.model)
        self.is_peft, self.zero3, self._engine, self.score_after_sampling = False, False, None, True
        base = learner.get_base_model() if hasattr(learner, "get_base_model") else learner
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=base.dtype)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"prefix_scorer_model={path!r} could not be loaded as a local model directory or a Hub model id: "
                f"{error}"
            ) from error
        ours, theirs = base.config.get_text_config().vocab_size, model.config.get_text_config().vocab_size
        probe = "SOUP probe: 0123456789 +-*/= abc xyz"
        try:
            same = AutoTokenizer.from_pretrained(path)(probe)["input_ids"] == trainer._tokenizer(probe)["input_ids"]
        except (OSError, ValueError):  # no tokenizer files next to the weights: the vocabulary size decides
            same = True
        if ours != theirs or not same:
            raise ValueError(
                f"prefix_scorer_model={path!r} does not share the learner's tokenizer (vocab_size {theirs} vs "
                f"{ours}{'' if same else ', and a probe encodes differently'}): its log-probs would score other "
                "tokens. Allowed: a model with the learner's tokenizer, or prefix_scorer_model=None (the initial "
                "policy)."
            )
        model.to(trainer.accelerator.device)
        self._prepare_snapshot(model)
        self.snapshot = model

    def refresh(self) -> None:
        return None


class DatasetSource(_Frozen):
    """Prefixes cut from each row's reference completion (``prefix_dataset_column``).

    Denominators: the row's ``prefix_logps_column`` when set, else a forward of the frozen scorer (its log-probs and
    entropies, temperature-scaled like TRL's). Rows without a reference go to ``fallback`` (the behavior copy, or no
    prefix). A reference longer than the decode budget is cut to it (and then does not end the response).
    """

    needs_rows = True

    def __init__(self, trainer, fallback: BehaviorBackend):
        args = trainer.args
        self.trainer, self.fallback = trainer, fallback
        self.column, self.logps_column = args.prefix_dataset_column, args.prefix_logps_column
        self.scorer = None
        if self.logps_column is None:
            if args.prefix_scorer_model is None:  # the initial policy: a copy of the learner now, never refreshed
                self.scorer = LocalBehaviorBackend(trainer, adapter_name=SCORER_ADAPTER)
            else:
                self.scorer = NamedScorer(trainer, args.prefix_scorer_model)

    def sample(self, prompt_ids, max_new_tokens, generation_batch_index=None, stream=0, rows=None):
        trainer = self.trainer
        if rows is None or len(rows) != len(prompt_ids):
            raise RuntimeError("prefix_source='dataset' needs the dataset row of every prompt row.")
        tokenizer = trainer._tokenizer
        refs = [
            reference_token_ids(row.get(self.column), tokenizer, tokenizer.eos_token_id, self.column) for row in rows
        ]

        def sample_group(missing: int, selected: list[int]) -> BehaviorSamples:
            prompts, examples = [prompt_ids[i] for i in selected], [rows[i] for i in selected]
            if missing:  # rows without a reference: the fallback writes them
                return self.fallback.sample(prompts, max_new_tokens, generation_batch_index, stream, rows=examples)
            return self._reference_samples(prompts, [refs[i] for i in selected], examples, max_new_tokens)

        return sample_in_groups([int(ref is None) for ref in refs], sample_group, tokenizer.pad_token_id)

    def _reference_samples(self, prompt_ids, refs, rows, max_new_tokens) -> BehaviorSamples:
        trainer = self.trainer
        device = trainer.accelerator.device
        ids = [ref[:max_new_tokens] for ref in refs]
        eos = set(trainer.eos_token_ids)
        ended = torch.tensor([bool(row) and row[-1] in eos for row in ids], device=device)
        tensors = [torch.tensor(row, dtype=torch.long) for row in ids]
        c_ids = pad(tensors, padding_value=trainer._tokenizer.pad_token_id, padding_side="right").to(device)
        c_mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="right").to(device)
        if self.logps_column is not None:
            logps = [
                torch.tensor(reference_row_logps(row.get(self.logps_column), len(ref), self.logps_column))
                for row, ref in zip(rows, refs, strict=True)
            ]
            logps = pad([t[:max_new_tokens] for t in logps], padding_value=0.0, padding_side="right").to(device)
            entropies = torch.zeros_like(logps)  # none known: entropy truncation is refused with a log-prob column
        else:
            logps, entropies = self.scorer.score(prompt_ids, ids)
        return BehaviorSamples(c_ids, c_mask, logps.float() * c_mask, entropies.float() * c_mask, ended)

    def clean_saved_model(self, output_dir: str) -> None:
        if self.scorer is not None:
            self.scorer.clean_saved_model(output_dir)


class TeacherSource(VLLMServerBehaviorBackend):
    """A teacher on its own vLLM server (``prefix_teacher_base_url``): never refreshed, nothing to checkpoint; its
    sampling log-probs are the prefix denominators. Its tokenizer must be the learner's (checked when built)."""

    role = "teacher"
    refreshable = False

    def __init__(self, trainer):
        super().__init__(trainer, base_url=trainer.args.prefix_teacher_base_url)

    refresh = _Frozen.refresh
    save_snapshot = _Frozen.save_snapshot
    load_snapshot = _Frozen.load_snapshot
    checkpoint_snapshot = _Frozen.checkpoint_snapshot


class SourceMixture(BehaviorBackend):
    """Each relay row from one of several sources (``prefix_source_weights``), or every row from one source that is
    not the behavior copy. Only the behavior copy (if used) is refreshed and checkpointed."""

    needs_rows = True

    def __init__(self, trainer, sources: dict[str, BehaviorBackend], behavior: BehaviorBackend | None):
        self.trainer = trainer
        self.names = source_names(trainer.args)
        self.weights = [source_weights(trainer.args)[name] for name in self.names]
        self.sources = sources
        self.behavior = behavior

    def refresh(self) -> None:
        if self.behavior is not None:
            self.behavior.refresh()

    def sample(self, prompt_ids, max_new_tokens, generation_batch_index=None, stream=0, rows=None):
        trainer = self.trainer
        if rows is None or len(rows) != len(prompt_ids):
            raise RuntimeError("The prefix sources need the dataset row of every prompt row.")
        index = trainer.generation_batch_index if generation_batch_index is None else generation_batch_index
        rank = trainer.accelerator.process_index
        generator = torch.Generator().manual_seed(
            behavior_sampling_seed(trainer.args.seed, index, rank, SOURCE_STREAM)
        )
        choice = choose_sources(self.weights, len(prompt_ids), generator)

        def sample_source(j: int, selected: list[int]) -> BehaviorSamples:
            name = self.names[j]
            stream = 0 if name == "behavior" else SOURCE_STREAM + 1 + j  # the behavior copy's own stream: as alone
            prompts, examples = [prompt_ids[i] for i in selected], [rows[i] for i in selected]
            return self.sources[name].sample(prompts, max_new_tokens, index, stream, rows=examples)

        samples = sample_in_groups(choice, sample_source, trainer._tokenizer.pad_token_id)
        samples.source_ids = torch.tensor(choice, dtype=torch.long, device=samples.completion_ids.device)
        return samples

    def checkpoint_snapshot(self, directory: str, mid_window: bool) -> bool:
        return self.behavior is not None and self.behavior.checkpoint_snapshot(directory, mid_window)

    def save_snapshot(self, directory: str) -> None:
        if self.behavior is not None:
            self.behavior.save_snapshot(directory)

    def load_snapshot(self, directory: str) -> None:
        if self.behavior is not None:
            self.behavior.load_snapshot(directory)

    def clean_saved_model(self, output_dir: str) -> None:
        for source in {id(s): s for s in [*self.sources.values(), self.behavior] if s is not None}.values():
            source.clean_saved_model(output_dir)


def build_builtin_source(name: str, trainer, behavior: BehaviorBackend | None = None) -> BehaviorBackend:
    """A built-in prefix source of ``trainer``; ``behavior``: the run's behavior copy, shared (the dataset source's
    fallback with ``prefix_dataset_fallback='behavior'``)."""
    from . import build_behavior_backend

    args = trainer.args
    if name == "behavior":
        return behavior or build_behavior_backend(args.behavior_backend, trainer, args.behavior_pool_size)
    if name == "on_policy":
        return OnPolicySource(trainer)
    if name == "teacher":
        return TeacherSource(trainer)
    if name == "dataset":
        if args.prefix_dataset_fallback == "behavior":
            fallback = behavior or build_behavior_backend(args.behavior_backend, trainer, args.behavior_pool_size)
        else:
            fallback = OnPolicySource(trainer)
        return DatasetSource(trainer, fallback)
    raise ValueError(f"{name!r} is not a built-in prefix source.")


def build_prefix_sources(trainer) -> BehaviorBackend:
    """What writes the prefixes of ``trainer``'s relay batches: the behavior backend (or pool) alone, as in the paper,
    or a :class:`SourceMixture` of the configured sources."""
    from . import build_behavior_backend

    args = trainer.args
    names = source_names(args)
    needs_behavior = "behavior" in names or ("dataset" in names and args.prefix_dataset_fallback == "behavior")
    behavior = (
        build_behavior_backend(args.behavior_backend, trainer, args.behavior_pool_size) if needs_behavior else None
    )
    if names == ["behavior"]:
        return behavior
    sources = {}
    for name in names:
        if name in BUILTIN_SOURCES:
            sources[name] = build_builtin_source(name, trainer, behavior)
        else:
            sources[name] = _registered_source(name, trainer)
    return SourceMixture(trainer, sources, behavior)


def _registered_source(name: str, trainer) -> BehaviorBackend:
    """What the factory registered under ``name`` builds, checked: a backend with ``sample`` (a factory that returns
    None or something else is reported by name, not as an AttributeError at the first relay batch)."""
    source = registered_source_factory(name)(trainer)
    if not callable(getattr(source, "sample", None)):
        raise TypeError(
            f"The prefix source {name!r} (trl_soup.register_prefix_source) returned {type(source).__name__}, not a "
            "backend: its factory(trainer) must return an object with sample(prompt_ids, max_new_tokens, "
            "generation_batch_index, stream, rows) -> BehaviorSamples, e.g. a trl_soup.behavior.BehaviorBackend."
        )
    return source
