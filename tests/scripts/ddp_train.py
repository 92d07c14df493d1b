"""Two-process DDP run of SOUPTrainer on CPU (gloo), launched by tests/test_ddp.py:

    accelerate launch --config_file recipes/accelerate_configs/cpu_ddp.yaml tests/scripts/ddp_train.py RESULT.json

Builds the toy model, tokenizer and data set (fixed seeds, identical on every rank), trains 6 steps with T = 3 (one
generation batch per step: ages 0, 1, 2, 0, 1, 2), then checks on every rank that

- the learner weights are bit-identical to rank 0's (DDP kept the replicas in sync) and moved away from the init;
- the behavior snapshot is bit-identical to rank 0's (every rank refreshed at the same batches from the same weights);
- this rank's own relay batches had a non-empty prefix, and on-policy batches none.

Every rank writes its checks to RESULT.rank<r>.json and the main process writes RESULT.json with the log history
(tests/launch.py `launch_for_result` puts the ranks' reports under "ranks"). A rank exits non-zero if its checks fail
(after writing its file, so the test can show what went wrong). The run ends with `common.end_run` (barrier, then
`os._exit`), not with an object collective and `destroy_process_group`: see there why.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from common import batch_summary, end_run, rank_result_path, script_args, script_trainer, write_json  # noqa: E402

from trl_soup.toy import build_dataset, build_tiny_model, build_tokenizer  # noqa: E402

MAX_STEPS = 6
REFRESH_INTERVAL = 3


def batch_report(record: dict) -> dict:
    """Per training generation batch on this rank: age, whether relay sampling ran, prefix tokens, old log-probs, and
    the prompts (ranks must see different shards)."""
    return {
        **batch_summary(record),
        "num_completions": int(record["batch"]["completion_ids"].size(0)),
        "prompts": sorted({example["prompt"] for example in record["inputs"]}),
    }


def flat_parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).to(torch.float64) for _, p in sorted(model.named_parameters())])


def same_as_rank0(vector: torch.Tensor) -> bool:
    """Bit-exact comparison with rank 0's vector (broadcast), and a gathered checksum for the report."""
    reference = vector.clone()
    dist.broadcast(reference, src=0)
    return bool(torch.equal(reference, vector))


def main(result_path: str) -> int:
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    initial = flat_parameters(model)
    dataset = build_dataset(64, seed=0)
    output_dir = os.path.join(os.path.dirname(os.path.abspath(result_path)), "ddp_out")
    args = script_args(output_dir, max_steps=MAX_STEPS, behavior_refresh_interval=REFRESH_INTERVAL, prefix_ratio=0.5)
    trainer = script_trainer(model, args, dataset, tokenizer, training_only=True)
    accelerator = trainer.accelerator
    trainer.train()

    assert dist.is_initialized(), "torch.distributed was not initialised: this is not a multi-process run"
    learner = flat_parameters(accelerator.unwrap_model(trainer.model))
    behavior = flat_parameters(trainer.behavior.snapshot)
    checksum = torch.tensor([learner.sum().item(), behavior.sum().item()], dtype=torch.float64)
    checksums = [torch.zeros_like(checksum) for _ in range(accelerator.num_processes)]
    dist.all_gather(checksums, checksum)

    batches = [batch_report(record) for record in trainer.records]
    expected_ages = [step % REFRESH_INTERVAL for step in range(MAX_STEPS)]
    rank_report = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "backend": dist.get_backend(),
        "weights_equal_rank0": same_as_rank0(learner),
        "behavior_equal_rank0": same_as_rank0(behavior),
        "weights_changed": not torch.equal(learner, initial),
        "checksums": [c.tolist() for c in checksums],
        "batches": batches,
        "ages_as_expected": [b["age"] for b in batches] == expected_ages,
        "relay_batches_with_prefix": sum(b["relay_record"] and b["prefix_tokens"] > 0 for b in batches),
        "relay_batches_with_old_logps": sum(b["relay_record"] and b["has_old_per_token_logps"] for b in batches),
        "prefix_tokens_on_policy_batches": sum(b["prefix_tokens"] for b in batches if b["age"] == 0),
        "relay_record_on_policy_batches": sum(b["relay_record"] for b in batches if b["age"] == 0),
    }
    num_relay = sum(age > 0 for age in expected_ages)
    rank_report["ok"] = bool(
        rank_report["weights_equal_rank0"]
        and rank_report["behavior_equal_rank0"]
        and rank_report["weights_changed"]
        and rank_report["ages_as_expected"]
        and rank_report["relay_batches_with_prefix"] == num_relay
        and rank_report["relay_batches_with_old_logps"] == 0  # the default: pi_old from the loss forward
        and rank_report["prefix_tokens_on_policy_batches"] == 0
        and rank_report["relay_record_on_policy_batches"] == 0
    )
    # Each rank writes its own report (the test collects them); the main process adds the log history.
    write_json(rank_result_path(result_path, accelerator.process_index), rank_report)
    if accelerator.is_main_process:
        write_json(result_path, {"log_history": trainer.state.log_history})
    if not rank_report["ok"]:
        print(f"[rank {accelerator.process_index}] DDP checks failed: {rank_report}", file=sys.stderr, flush=True)
    return 0 if rank_report["ok"] else 1


if __name__ == "__main__":
    end_run(main(sys.argv[1]))
