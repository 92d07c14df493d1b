"""Every name trl_soup takes from TRL or transformers internals, in one place (TRL moves fast; pinned >=1.16,<1.17).

Public APIs (``trl.GRPOTrainer``, ``transformers.AutoModelForCausalLM``, ``accelerate.utils``) are imported where they
are used; anything from a submodule that is not documented as public, or whose name or home changed between the
versions tested, is imported here, so that a version bump has one file to read. Optional dependencies (vLLM, through
TRL's client) are imported on call.
"""

from contextlib import contextmanager

from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.models import unwrap_model_for_generation
from trl.models.utils import disable_gradient_checkpointing, prepare_deepspeed
from trl.trainer.utils import add_fused_lm_head, pad, use_adapter

try:  # transformers >= 5: skip the random init of a model whose weights are loaded right after
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - older transformers
    from transformers.modeling_utils import no_init_weights

__all__ = [
    "DynamicLayer",
    "DynamicSlidingWindowLayer",
    "PREFIX_CHECKPOINT_DIR",
    "Qwen2Tokenizer",
    "bytes_to_unicode",
    "add_fused_lm_head",
    "disable_gradient_checkpointing",
    "generation_budget",
    "generation_cache_kwargs",
    "output_cache",
    "no_init_weights",
    "pad",
    "prepare_deepspeed",
    "trl_vllm_client_class",
    "unwrap_model_for_generation",
    "use_adapter",
]


@contextmanager
def generation_budget(trainer, max_new_tokens: int):
    """Temporarily set a GRPOTrainer's generation budget (its vLLM generation, or transformers' generation config
    and kwargs) to ``max_new_tokens`` tokens."""
    if trainer.use_vllm:
        saved = trainer.vllm_generation.max_completion_length
        trainer.vllm_generation.max_completion_length = max_new_tokens
        try:
            yield
        finally:
            trainer.vllm_generation.max_completion_length = saved
        return
    saved = trainer.generation_config.max_new_tokens, trainer.generation_kwargs.get("max_new_tokens")
    trainer.generation_config.max_new_tokens = max_new_tokens
    trainer.generation_kwargs["max_new_tokens"] = max_new_tokens
    try:
        yield
    finally:
        trainer.generation_config.max_new_tokens, trainer.generation_kwargs["max_new_tokens"] = saved


def _cache_is_named_cache() -> bool:
    """Whether transformers calls the KV cache ``cache`` (newer 5.x: ``past_key_values`` is deprecated there, with a
    FutureWarning from ``generate`` and a warning from an output's ``past_key_values``)."""
    from transformers.utils import generic

    return hasattr(generic, "_rename_kwargs_for_bc")


def generation_cache_kwargs(cache) -> dict:
    """The keyword argument that hands ``generate`` a prefilled cache, under the name this transformers takes."""
    if cache is None:
        return {}
    return {"cache" if _cache_is_named_cache() else "past_key_values": cache}


def output_cache(output):
    """The KV cache of a model output (None without one), under the name this transformers uses."""
    return getattr(output, "cache" if _cache_is_named_cache() else "past_key_values", None)


def trl_vllm_client_class():
    """TRL's ``VLLMClient`` (imports vLLM: on call, only where the ``"nccl"`` refresh needs it)."""
    from trl.generation.vllm_client import VLLMClient

    return VLLMClient
