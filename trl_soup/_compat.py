"""Every name trl_soup takes from TRL or transformers internals, in one place (TRL moves fast; pinned >=1.16,<1.17)."""

from contextlib import contextmanager

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.models import unwrap_model_for_generation
from trl.models.utils import disable_gradient_checkpointing, prepare_deepspeed
from trl.trainer.utils import add_fused_lm_head, pad, use_adapter

try:  # transformers >= 5: skip the random init of a model whose weights are loaded right after
    from transformers.initialization import no_init_weights
except ImportError:  # pragma: no cover - older transformers
    from transformers.modeling_utils import no_init_weights

__all__ = [
    "PREFIX_CHECKPOINT_DIR",
    "add_fused_lm_head",
    "disable_gradient_checkpointing",
    "generation_budget",
    "no_init_weights",
    "pad",
    "prepare_deepspeed",
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
