"""Two-process DDP run with the adaptive refresh policy, launched by tests/test_refresh.py:

    accelerate launch --config_file recipes/accelerate_configs/cpu_ddp.yaml \\
        tests/scripts/ddp_adaptive_refresh.py RESULT.json

6 steps, T = 8, `behavior_max_staleness=0` and `behavior_refresh_min_interval=2`: every relay batch is stale, so the
policy refreshes at batches 0, 2, 4 (ages 0, 1, 0, 1, 0, 1) where the fixed schedule would not refresh before batch 8.
Each rank reports the ages and the staleness its own schedule saw before each decision (the decision must be the
same on every rank, from the same all-reduced statistics) and whether its behavior snapshot equals rank 0's.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from common import end_run, rank_result_path, script_args, write_json  # noqa: E402

from trl_soup import SOUPTrainer  # noqa: E402
from trl_soup.toy import build_dataset, build_tiny_model, build_tokenizer, char_match_reward  # noqa: E402

MAX_STEPS = 6


class DecisionRecorder(SOUPTrainer):
    """Records the age each generation batch got from the refresh schedule, and the staleness it saw."""

    def _refresh_or_prefetch(self, inputs):
        logged = len(self._metrics["train"]["soup/staleness"])
        age = super()._refresh_or_prefetch(inputs)
        values = self._metrics["train"]["soup/staleness"]
        self.decisions.append({"age": age, "staleness": values[-1] if len(values) > logged else None})
        return age


def main(result_path: str) -> int:
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    output_dir = os.path.join(os.path.dirname(os.path.abspath(result_path)), "ddp_adaptive_out")
    args = script_args(
        output_dir,
        max_steps=MAX_STEPS,
        behavior_refresh_interval=8,
        behavior_refresh_policy="adaptive",
        behavior_max_staleness=0.0,
        behavior_refresh_min_interval=2,
    )
    trainer = DecisionRecorder(
        model=build_tiny_model(tokenizer, seed=0),
        reward_funcs=char_match_reward,
        args=args,
        train_dataset=build_dataset(64, seed=0),
        processing_class=tokenizer,
    )
    trainer.decisions = []
    trainer.train()
    snapshot = torch.cat(
        [p.detach().reshape(-1).to(torch.float64) for _, p in sorted(trainer.behavior.snapshot.named_parameters())]
    )
    reference = snapshot.clone()
    dist.broadcast(reference, src=0)
    report = {
        "rank": trainer.accelerator.process_index,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "ages": [d["age"] for d in trainer.decisions],
        "staleness": [d["staleness"] for d in trainer.decisions],
        "last_refresh": trainer.refresh_schedule.last_refresh,
        "behavior_equal_rank0": bool(torch.equal(reference, snapshot)),
    }
    write_json(rank_result_path(result_path, trainer.accelerator.process_index), report)
    if trainer.accelerator.is_main_process:
        write_json(result_path, {"log_history": trainer.state.log_history})
    return 0


if __name__ == "__main__":
    end_run(main(sys.argv[1]))
