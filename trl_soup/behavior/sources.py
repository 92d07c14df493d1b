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

from ..sources import (
    BUILTIN_SOURCES,
    choose_sources,
    reference_row_logps,
    reference_token_ids,
    registered_source_factory,
    source_names,
    source_weights,
)
from .base import (
    BehaviorBackend,
    BehaviorSamples,
    Scorer,
    inner_stream,
    padded_rows,
    sample_from,
    samples_from_token_rows,
)
from .context import BehaviorContext, as_context
from .local import LocalBehaviorBackend
from .pool import sample_in_groups
from .vllm_server import VLLMServerBehaviorBackend

SCORER_ADAPTER = "prefix_scorer"
SOURCE_STREAM = 1_000  # seed streams of the sources (behavior keeps stream 0, a pool's members 0..K-1)

__all__ = [
    "DatasetSource",
    "FrozenSource",
    "NamedScorer",
    "OnPolicySource",
    "SourceMixture",
    "TeacherSource",
    "build_builtin_source",
    "build_prefix_sources",
]


def empty_samples(num_rows: int, pad_token_id: int, device) -> BehaviorSamples:
    """Rows without a prefix (length 0): the current policy writes them whole."""
    zeros = torch.zeros(num_rows, 1)
    return samples_from_token_rows([[] for _ in range(num_rows)], zeros, zeros, (), pad_token_id, device)


class FrozenSource:
    """Mixin of a source that SOUP never refreshes and that has nothing to checkpoint; listed before the backend class
    it completes (``class TeacherSource(FrozenSource, VLLMServerBehaviorBackend)``), so that its methods win."""

    def refresh(self) -> None:
        return None

    def save_snapshot(self, directory: str) -> None:
        return None

    def load_snapshot(self, directory: str) -> None:
        return None

    def checkpoint_snapshot(self, directory: str, mid_window: bool) -> bool:
        return False


class OnPolicySource(FrozenSource, BehaviorBackend):
    """No prefix: every row of this source is written by the current policy (for ``prefix_source_weights``)."""

    def __init__(self, context: BehaviorContext):
        self.context = context

    def sample(self, prompt_ids, max_new_tokens, generation_batch_index, stream=0, rows=None):
        return empty_samples(len(prompt_ids), self.context.sampling.pad_token_id, self.context.device)


def load_scorer_model(context: BehaviorContext, path: str):
    """The model at ``prefix_scorer_model`` (a directory or a Hub id), in the learner's dtype; refused unless it shares
    the learner's tokenizer (the vocabulary size, and a probe's token ids when its tokenizer files are there)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    learner = context.learner()
    base = learner.get_base_model() if hasattr(learner, "get_base_model") else learner
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=base.dtype)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"prefix_scorer_model={path!r} could not be loaded as a local model directory or a Hub model id: {error}"
        ) from error
    ours, theirs = base.config.get_text_config().vocab_size, model.config.get_text_config().vocab_size
    probe = "SOUP probe: 0123456789 +-*/= abc xyz"
    try:
        same = AutoTokenizer.from_pretrained(path)(probe)["input_ids"] == context.tokenizer(probe)["input_ids"]
    except (OSError, ValueError):  # no tokenizer files next to the weights: the vocabulary size decides
        same = True
    if ours != theirs or not same:
        raise ValueError(
            f"prefix_scorer_model={path!r} does not share the learner's tokenizer (vocab_size {theirs} vs "
            f"{ours}{'' if same else ', and a probe encodes differently'}): its log-probs would score other "
            "tokens. Allowed: a model with the learner's tokenizer, or prefix_scorer_model=None (the initial "
            "policy)."
        )
    return model


class NamedScorer(FrozenSource, LocalBehaviorBackend):
    """A frozen model loaded from ``prefix_scorer_model`` (:func:`load_scorer_model`) that scores dataset references
    (never samples, never refreshed): a local backend around that model instead of a copy of the learner."""

    def __init__(self, context: BehaviorContext, path: str):
        super().__init__(context, adapter_name=SCORER_ADAPTER, model=load_scorer_model(context, path))


class DatasetSource(FrozenSource, BehaviorBackend):
    """Prefixes cut from each row's reference completion (``prefix_dataset_column``).

    Denominators: the row's ``prefix_logps_column`` when set, else a forward of the frozen ``scorer`` (a
    :class:`~trl_soup.behavior.base.Scorer`: its log-probs and entropies, temperature-scaled like TRL's). Rows without
    a reference go to ``fallback`` (the behavior copy, or no prefix). A reference longer than the decode budget is cut
    to it (and then does not end the response).
    """

    needs_rows = True

    def __init__(self, context: BehaviorContext, fallback: BehaviorBackend):
        args = context.args
        self.context, self.fallback = context, fallback
        self.column, self.logps_column = args.prefix_dataset_column, args.prefix_logps_column
        self.scorer: Scorer | None = None
        if self.logps_column is None:
            if args.prefix_scorer_model is None:  # the initial policy: a copy of the learner now, never refreshed
                self.scorer = LocalBehaviorBackend(context, adapter_name=SCORER_ADAPTER)
            else:
                self.scorer = NamedScorer(context, args.prefix_scorer_model)

    def sample(self, prompt_ids, max_new_tokens, generation_batch_index, stream=0, rows=None):
        if rows is None or len(rows) != len(prompt_ids):
            raise RuntimeError("prefix_source='dataset' needs the dataset row of every prompt row.")
        tokenizer = self.context.tokenizer
        refs = [
            reference_token_ids(row.get(self.column), tokenizer, tokenizer.eos_token_id, self.column) for row in rows
        ]

        def sample_group(missing: int, selected: list[int]) -> BehaviorSamples:
            prompts, examples = [prompt_ids[i] for i in selected], [rows[i] for i in selected]
            if missing:  # rows without a reference: the fallback writes them
                return sample_from(self.fallback, prompts, max_new_tokens, generation_batch_index, stream, examples)
            return self._reference_samples(prompts, [refs[i] for i in selected], examples, max_new_tokens)

        return sample_in_groups([int(ref is None) for ref in refs], sample_group, self.context.sampling.pad_token_id)

    def _reference_samples(self, prompt_ids, refs, rows, max_new_tokens) -> BehaviorSamples:
        ids = [ref[:max_new_tokens] for ref in refs]
        if self.logps_column is not None:
            column = self.logps_column
            values = [
                reference_row_logps(row.get(column), len(ref), column)[:max_new_tokens]
                for row, ref in zip(rows, refs, strict=True)
            ]
            logps, _ = padded_rows(values, 0.0, torch.float32)
            entropies = torch.zeros_like(logps)  # none known: entropy truncation is refused with a log-prob column
        else:
            logps, entropies = self.scorer.score(prompt_ids, ids)
        sampling = self.context.sampling
        return samples_from_token_rows(
            ids, logps, entropies, sampling.eos_token_ids, sampling.pad_token_id, self.context.device
        )

    def clean_saved_model(self, output_dir: str) -> None:
        if self.scorer is not None:
            self.scorer.clean_saved_model(output_dir)


class TeacherSource(FrozenSource, VLLMServerBehaviorBackend):
    """A teacher on its own vLLM server (``prefix_teacher_base_url``): never refreshed, nothing to checkpoint; its
    sampling log-probs are the prefix denominators. Its tokenizer must be the learner's (checked when built)."""

    role = "teacher"
    refreshable = False

    def __init__(self, context: BehaviorContext):
        super().__init__(context, base_url=context.args.prefix_teacher_base_url)


class SourceMixture(BehaviorBackend):
    """Each relay row from one of several sources (``prefix_source_weights``), or every row from one source that is
    not the behavior copy. Only the behavior copy (if used) is refreshed and checkpointed. Each source gets the rows of
    the batch only if it declares ``needs_rows``."""

    needs_rows = True

    def __init__(
        self, context: BehaviorContext, sources: dict[str, BehaviorBackend], behavior: BehaviorBackend | None
    ):
        self.context = context
        self.names = source_names(context.args)
        self.weights = [source_weights(context.args)[name] for name in self.names]
        self.sources = sources
        self.behavior = behavior

    def refresh(self) -> None:
        if self.behavior is not None:
            self.behavior.refresh()

    def sample(self, prompt_ids, max_new_tokens, generation_batch_index, stream=0, rows=None):
        """At stream 0 the choice of sources uses stream ``SOURCE_STREAM``, the behavior copy its own stream 0 (as
        alone) and source j stream ``SOURCE_STREAM + 1 + j`` (another stream: a block of its own,
        :func:`~trl_soup.behavior.base.inner_stream`)."""
        if rows is None or len(rows) != len(prompt_ids):
            raise RuntimeError("The prefix sources need the dataset row of every prompt row.")
        index, width = generation_batch_index, SOURCE_STREAM + 1 + len(self.names)
        generator = self.context.sampling_generator(index, inner_stream(stream, SOURCE_STREAM, width))
        choice = choose_sources(self.weights, len(prompt_ids), generator)

        def sample_source(j: int, selected: list[int]) -> BehaviorSamples:
            name = self.names[j]
            own = 0 if name == "behavior" else SOURCE_STREAM + 1 + j
            prompts, examples = [prompt_ids[i] for i in selected], [rows[i] for i in selected]
            source_stream = inner_stream(stream, own, width)
            return sample_from(self.sources[name], prompts, max_new_tokens, index, source_stream, examples)

        samples = sample_in_groups(choice, sample_source, self.context.sampling.pad_token_id)
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


def build_builtin_source(name: str, context, behavior: BehaviorBackend | None = None) -> BehaviorBackend:
    """The built-in prefix source ``name``, built from ``context`` (a :class:`BehaviorContext`; a trainer, as up to
    0.2, is converted with :meth:`BehaviorContext.from_trainer`); ``behavior``: the run's behavior copy, shared (the
    dataset source's fallback with ``prefix_dataset_fallback='behavior'``)."""
    from . import build_behavior_backend

    context = as_context(context)
    args = context.args
    if name == "behavior":
        return behavior or build_behavior_backend(args.behavior_backend, context, args.behavior_pool_size)
    if name == "on_policy":
        return OnPolicySource(context)
    if name == "teacher":
        return TeacherSource(context)
    if name == "dataset":
        if args.prefix_dataset_fallback == "behavior":
            fallback = behavior or build_behavior_backend(args.behavior_backend, context, args.behavior_pool_size)
        else:
            fallback = OnPolicySource(context)
        return DatasetSource(context, fallback)
    raise ValueError(f"{name!r} is not a built-in prefix source.")


def build_prefix_sources(context, trainer=None) -> BehaviorBackend:
    """What writes the prefixes of the relay batches: the behavior backend (or pool) alone, as in the paper, or a
    :class:`SourceMixture` of the configured sources.

    ``context``: a :class:`BehaviorContext`, or the trainer (``SOUPTrainer`` passes itself: it is converted once with
    :meth:`BehaviorContext.from_trainer` and is then ``trainer`` too). ``trainer``: what users' registered factories
    get (``factory(trainer)``, docs/prefix_sources.md); without one they get the context.
    """
    from . import build_behavior_backend

    if not isinstance(context, BehaviorContext):
        context, trainer = BehaviorContext.from_trainer(context), context
    args = context.args
    names = source_names(args)
    needs_behavior = "behavior" in names or ("dataset" in names and args.prefix_dataset_fallback == "behavior")
    behavior = (
        build_behavior_backend(args.behavior_backend, context, args.behavior_pool_size) if needs_behavior else None
    )
    if names == ["behavior"]:
        return behavior
    sources = {}
    for name in names:
        if name in BUILTIN_SOURCES:
            sources[name] = build_builtin_source(name, context, behavior)
        else:
            sources[name] = _registered_source(name, context if trainer is None else trainer)
    return SourceMixture(context, sources, behavior)


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
