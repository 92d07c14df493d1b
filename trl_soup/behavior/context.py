"""What a behavior backend may use of the run: :class:`BehaviorContext`, a small set of typed handles.

Backends and prefix sources (:mod:`trl_soup.behavior`) are built from a context, never from the trainer (as oat's
actors get explicit handles and never the learner object, and verl's registries take typed callables):

- ``args``: the run's :class:`trl_soup.SOUPConfig`;
- ``tokenizer``: the learner's tokenizer (tokenizer probes, reference completions);
- ``accelerator``: the device, the rank, ZeRO-3, ``unwrap_model``, ``is_main_process``, ``wait_for_everyone``;
- ``model`` / ``wrapped_model``: callables returning the learner as the trainer holds it and its wrapped form (DDP, the
  DeepSpeed engine: what TRL's generation unwrapping takes); :meth:`BehaviorContext.learner` unwraps it;
- ``sampling``: :class:`SamplingSettings`, the learner's sampling values;
- ``score``: a :class:`ScoreFunction`, the per-token log-probs and entropies TRL's trainer computes;
- ``generation_batch_index``: a callable returning the current generation batch (a pool stamps its refreshes with it).

:meth:`BehaviorContext.from_trainer` is the only place that reads a trainer's attributes; a context can as well be
built by hand, without a trainer (tests/test_behavior_context.py). What changes after the context is built is read
through a callable at each use, never copied: the learner (accelerate and DeepSpeed wrap it when training starts, a
test may cast it), the generation batch counter, and TRL's transformers generation settings (``generation_config`` /
``generation_kwargs``, which ``_compat.generation_budget`` changes for the length of a continuation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import GenerationConfig

from .._compat import unwrap_model_for_generation
from .prefetch import behavior_sampling_seed

__all__ = ["BehaviorContext", "SamplingSettings", "ScoreFunction", "as_context", "is_zero3"]


class ScoreFunction(Protocol):
    """Per-token log-probs (temperature-scaled like TRL's) of the last ``logits_to_keep`` tokens of ``input_ids``
    under ``model``, their entropies with ``compute_entropy`` (else None), and an auxiliary loss (None here): the
    signature of TRL's ``GRPOTrainer._get_per_token_logps_and_entropies``."""

    def __call__(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]: ...


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling values of the learner, which the behavior copy samples with (TRL's, in a context built from a
    trainer).

    Attributes:
        temperature, top_p, top_k, min_p, repetition_penalty: the sampling settings (``top_k`` 0 and ``min_p`` None:
            off).
        max_completion_length: the longest completion of the run.
        eos_token_ids: every token id that ends a response.
        pad_token_id, bos_token_id: the tokenizer's.
        pad_to_multiple_of: prompt padding (TRL's; None: none).
        transformers_generation: a callable returning the ``(generation_kwargs, generation_config)`` the local
            backend passes to ``generate``, read at each sample (TRL's, which a continuation changes for a while);
            None: built from the values above (:meth:`generation`), what the local copy samples with when the learner
            generates with vLLM (TRL then builds no transformers settings).
    """

    temperature: float
    max_completion_length: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    top_p: float = 1.0
    top_k: int | None = 0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    bos_token_id: int | None = None
    pad_to_multiple_of: int | None = None
    transformers_generation: Callable[[], tuple[dict, GenerationConfig]] | None = None

    def generation(self) -> tuple[dict, GenerationConfig]:
        """The transformers generation kwargs and config to sample with (the caller copies before changing them)."""
        if self.transformers_generation is not None:
            return self.transformers_generation()
        kwargs = {
            "max_new_tokens": self.max_completion_length,
            "do_sample": True,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
        }
        return kwargs, GenerationConfig(**kwargs, disable_compile=True)


def is_zero3(accelerator) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the parameters."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def _no_batch_yet() -> int:
    return 0


@dataclass(frozen=True)
class BehaviorContext:
    """The handles a behavior backend or prefix source is built from (see the module docstring): never the trainer.

    ``model``, ``wrapped_model`` and ``generation_batch_index`` are callables read at each use (the trainer's model is
    wrapped when training starts; the counter moves every batch); ``wrapped_model`` None: ``model``.
    """

    args: Any
    tokenizer: Any
    accelerator: Any
    model: Callable[[], torch.nn.Module]
    sampling: SamplingSettings
    score: ScoreFunction
    wrapped_model: Callable[[], torch.nn.Module] | None = None
    generation_batch_index: Callable[[], int] = _no_batch_yet

    @classmethod
    def from_trainer(cls, trainer) -> BehaviorContext:
        """The context of a built SOUPTrainer (GRPOTrainer's ``__init__`` has run): the only place that reads a
        trainer's attributes. The learner, the generation batch counter and TRL's transformers generation settings
        are read through callables, at each use; with ``use_vllm`` TRL builds no transformers settings and the local
        copy samples with ones built from TRL's sampling values (:meth:`SamplingSettings.generation`)."""
        tokenizer = trainer._tokenizer
        generation = lambda: (trainer.generation_kwargs, trainer.generation_config)  # noqa: E731 (read at each use)
        sampling = SamplingSettings(
            temperature=trainer.temperature,
            max_completion_length=trainer.max_completion_length,
            eos_token_ids=tuple(trainer.eos_token_ids),
            pad_token_id=tokenizer.pad_token_id,
            top_p=trainer.top_p,
            top_k=trainer.top_k,
            min_p=trainer.min_p,
            repetition_penalty=trainer.repetition_penalty,
            bos_token_id=tokenizer.bos_token_id,
            pad_to_multiple_of=trainer.pad_to_multiple_of,
            transformers_generation=None if trainer.use_vllm else generation,
        )
        return cls(
            args=trainer.args,
            tokenizer=tokenizer,
            accelerator=trainer.accelerator,
            model=lambda: trainer.model,
            sampling=sampling,
            score=trainer._get_per_token_logps_and_entropies,
            wrapped_model=lambda: trainer.model_wrapped,
            generation_batch_index=lambda: trainer.generation_batch_index,
        )

    def learner(self) -> torch.nn.Module:
        """The learner model, unwrapped (a PeftModel under PEFT)."""
        return self.accelerator.unwrap_model(self.model())

    def generation_model(self) -> torch.nn.Module:
        """The learner as TRL's generation unwrapping takes it (``wrapped_model``, else ``model``)."""
        return (self.wrapped_model or self.model)()

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def zero3(self) -> bool:
        return is_zero3(self.accelerator)

    def sampling_seed(self, generation_batch_index: int, stream: int = 0) -> int:
        """The seed of behavior sampling in this generation batch on this rank, for ``stream``
        (:func:`trl_soup.behavior.prefetch.behavior_sampling_seed`: the one place every backend seeds from)."""
        return behavior_sampling_seed(self.args.seed, generation_batch_index, self.process_index, stream)

    def sampling_generator(self, generation_batch_index: int, stream: int = 0) -> torch.Generator:
        """A CPU generator seeded with :meth:`sampling_seed`."""
        return torch.Generator().manual_seed(self.sampling_seed(generation_batch_index, stream))

    def unwrapped_for_generation(self, model, generation_kwargs: dict | None = None):
        """TRL's ``unwrap_model_for_generation`` of ``model`` under the run's ZeRO-3 gathering setting
        (``ds3_gather_for_generation``)."""
        return unwrap_model_for_generation(
            model,
            self.accelerator,
            gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            generation_kwargs=generation_kwargs,
        )


def as_context(source) -> BehaviorContext:
    """``source`` if it is a :class:`BehaviorContext`; a trainer (how backends were built up to 0.2) converted with
    :meth:`BehaviorContext.from_trainer`. The public builders accept either."""
    return source if isinstance(source, BehaviorContext) else BehaviorContext.from_trainer(source)
