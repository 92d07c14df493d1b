"""Two-process DeepSpeed ZeRO-3 run of SOUPTrainer on CPU, launched by tests/test_zero3.py:

    accelerate launch --config_file recipes/accelerate_configs/cpu_zero3.yaml tests/scripts/zero3_train.py RESULT.json

Builds the toy model, tokenizer and data set (fixed seeds, identical on every rank), trains 6 steps with T = 3 (one
generation batch per step: ages 0, 1, 2, 0, 1, 2; a checkpoint at step 5, mid-window), and records on every rank:

- how the learner's and the behavior copy's parameters are partitioned (DeepSpeed's ``ds_numel`` vs the local
  ``ds_tensor``);
- per generation batch, with both models gathered: whether the snapshot equals the learner (right after a refresh),
  equals itself at the last refresh (frozen between refreshes) and whether the learner moved since;
- on relay batches, the largest gap between ``behavior_per_token_logps`` and an independent forward of a plain
  (unpartitioned) copy of the gathered snapshot;
- the prefix tokens of relay and on-policy batches (rank 1 keeps whole behavior responses, so it has no row to continue
  while rank 0 has some);
- after training: save_snapshot / refresh / load_snapshot restore the saved full weights, and the mid-window checkpoint
  holds the snapshot's full weights.

Every gather is a collective, so every rank runs every check in the same order. Every rank writes RESULT.rank<r>.json,
the main process RESULT.json (the log history); the run ends with `common.end_run` (barrier, then `os._exit`).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from common import (  # noqa: E402
    RecordingTrainer,
    batch_summary,
    end_run,
    rank_result_path,
    reference_logps,
    script_args,
    script_trainer,
    write_json,
)

from trl_soup.behavior.local import SNAPSHOT_FILE  # noqa: E402
from trl_soup.toy import build_dataset, build_tiny_model, build_tokenizer  # noqa: E402
from trl_soup.trainer import SNAPSHOT_DIR  # noqa: E402

MAX_STEPS = 6
REFRESH_INTERVAL = 3
SAVE_STEP = 5  # 5 generation batches done, 5 % 3 != 0: mid-window, the snapshot goes into the checkpoint
# DeepSpeed keeps parameters below stage3_param_persistence_threshold (1e5 elements unless configured) whole on every
# rank: a wider MLP (128 x 1024) makes the learner hold both kinds, persistent and partitioned.
MODEL_SIZES = {"intermediate_size": 1024}


def gathered_state(model) -> dict[str, torch.Tensor]:
    """Full float64 copies of ``model``'s parameters, gathered one at a time (a collective)."""
    state = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            state[name] = param.detach().to(torch.float64, copy=True)
    return state


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[name].reshape(-1) for name in sorted(state)])


def partition_report(model) -> dict:
    """How DeepSpeed holds ``model``'s parameters on this rank, outside any gather."""
    params = [(name, p) for name, p in model.named_parameters()]
    zero = [(name, p) for name, p in params if hasattr(p, "ds_numel")]
    partitioned = [(name, p) for name, p in zero if p.ds_tensor.numel() < p.ds_numel and p.data.numel() == 0]
    name, largest = max(zero, key=lambda item: item[1].ds_numel) if zero else ("", None)
    return {
        "num_params": len(params),
        "num_zero3_params": len(zero),
        "num_partitioned": len(partitioned),
        "largest": name,
        "largest_full_numel": int(largest.ds_numel) if largest is not None else 0,
        "largest_local_numel": int(largest.ds_tensor.numel()) if largest is not None else 0,
        "largest_data_numel": int(largest.data.numel()) if largest is not None else 0,
    }


def independent_behavior_logps(tokenizer, snapshot_state, output, temperature) -> torch.Tensor:
    """log pi_behavior of every completion token from a plain forward of an unpartitioned copy of the snapshot."""
    model = build_tiny_model(tokenizer, seed=1, **MODEL_SIZES)
    model.load_state_dict({k: v.to(torch.float32) for k, v in snapshot_state.items()}, strict=True)
    model.eval()
    logps, _ = reference_logps(
        model,
        output["prompt_ids"],
        output["prompt_mask"],
        output["completion_ids"],
        output["completion_mask"],
        temperature,
    )
    return logps


class ZeRO3RecordingTrainer(RecordingTrainer):
    """Adds to each training batch's record, as "checks", the gathered-weight checks listed in the module docstring
    (every rank gathers at every batch, in the same order)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, training_only=True, **kwargs)
        self.at_refresh = None  # (learner, snapshot) gathered right after the last refresh

    def record_after(self, record):
        output, relay = record["batch"], record["relay"]
        learner = flat(gathered_state(self.accelerator.unwrap_model(self.model)))
        snapshot_state = gathered_state(self.behavior.snapshot)
        snapshot = flat(snapshot_state)
        checks = {
            "rows_without_continuation": int(relay.no_continuation.sum()) if relay is not None else 0,
            "rows": int(output["completion_ids"].size(0)),
            "snapshot_equals_learner": bool(torch.equal(snapshot, learner)),
        }
        if record["age"] == 0:
            self.at_refresh = (learner, snapshot)
        else:
            checks["snapshot_frozen"] = bool(torch.equal(snapshot, self.at_refresh[1]))
            checks["learner_moved"] = not torch.equal(learner, self.at_refresh[0])
            prefix = output["prefix_mask"].bool()
            reference = independent_behavior_logps(self.processing_class, snapshot_state, output, self.temperature)
            got = output["behavior_per_token_logps"]
            checks["behavior_logps_max_error"] = float((got[prefix] - reference[prefix]).abs().max())
            checks["behavior_logps_zero_outside_prefix"] = bool(torch.all(got[~prefix] == 0))
        return {"checks": checks}


def main(result_path: str) -> int:
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, seed=0, **MODEL_SIZES)
    initial = flat({k: v.detach().double() for k, v in model.named_parameters()})
    dataset = build_dataset(64, seed=0)
    output_dir = os.path.join(os.path.dirname(os.path.abspath(result_path)), "zero3_out")
    args = script_args(
        output_dir,
        max_steps=MAX_STEPS,
        behavior_refresh_interval=REFRESH_INTERVAL,
        prefix_ratio=0.5,
        save_strategy="steps",
        save_steps=SAVE_STEP,
        save_only_model=True,
    )
    trainer = script_trainer(model, args, dataset, tokenizer, ZeRO3RecordingTrainer)
    accelerator = trainer.accelerator
    if accelerator.process_index == 1:
        # Rank 1 keeps whole behavior responses, so none of its rows needs a continuation while rank 0's do: the
        # collective steps (continuation generation, scoring, pi_old) must still line up across ranks.
        trainer.args.prefix_ratio = 1.0
    trainer.train()
    assert dist.is_initialized(), "torch.distributed was not initialised: this is not a multi-process run"

    learner_model = accelerator.unwrap_model(trainer.model)
    behavior = trainer.behavior
    report = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "zero_stage": accelerator.state.deepspeed_plugin.zero_stage,
        "learner_partition": partition_report(learner_model),
        "snapshot_partition": partition_report(behavior.snapshot),
        "batches": [{**batch_summary(record), **record["checks"]} for record in trainer.records],
    }
    final_learner = gathered_state(learner_model)
    final_snapshot = gathered_state(behavior.snapshot)
    report["weights_changed"] = not torch.equal(flat(final_learner), initial)

    # The mid-window checkpoint holds the snapshot's full weights (frozen since the refresh at step 4).
    saved_path = os.path.join(output_dir, f"checkpoint-{SAVE_STEP}", SNAPSHOT_DIR, SNAPSHOT_FILE)
    saved = torch.load(saved_path, map_location="cpu", weights_only=True)["model"]
    report["checkpoint_snapshot_equal"] = all(
        torch.equal(saved[name].double(), tensor) for name, tensor in final_snapshot.items()
    )

    # save_snapshot -> refresh (snapshot := learner, which moved since) -> load_snapshot restores the saved weights.
    directory = os.path.join(output_dir, "snapshot_roundtrip")
    behavior.save_snapshot(directory)
    accelerator.wait_for_everyone()
    behavior.refresh()
    refreshed = flat(gathered_state(behavior.snapshot))
    report["refresh_equals_learner"] = bool(torch.equal(refreshed, flat(final_learner)))
    report["refresh_changed_snapshot"] = not torch.equal(refreshed, flat(final_snapshot))
    behavior.load_snapshot(directory)
    report["load_restores_snapshot"] = bool(torch.equal(flat(gathered_state(behavior.snapshot)), flat(final_snapshot)))

    # Each rank writes its own report (the test collects them); the main process adds the log history.
    write_json(rank_result_path(result_path, accelerator.process_index), report)
    if accelerator.is_main_process:
        write_json(result_path, {"log_history": trainer.state.log_history})
    return 0


if __name__ == "__main__":
    end_run(main(sys.argv[1]))
