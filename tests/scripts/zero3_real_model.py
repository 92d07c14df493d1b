"""Two-process DeepSpeed ZeRO-3 run of SOUPTrainer on the real model (SmolLM2-135M-Instruct), launched by
tests/test_real_model.py:

    accelerate launch --config_file recipes/accelerate_configs/cpu_zero3.yaml \
        tests/scripts/zero3_real_model.py RESULT.json

Loads the checkpoint `trl_soup.models.fetch_model` returns (the test fetched it already: here it comes from the cache)
under ZeRO-3 (partitioned as it loads), 2 chat prompts of the arithmetic task per generation batch, and trains 3 steps
with T = 3 (generation batches: on-policy, relay, relay) under a linear schedule with 2 warm-up steps: the first
optimizer step has learning rate 0, so the first relay batch sees a learner equal to the snapshot (the prefix log-ratio
at identical weights is measured there), and the second step moves the learner (at the second relay batch the snapshot
is older than the learner). Records on every rank, per generation batch, with every parameter gathered
one at a time (a collective: every rank runs every check in the same order):

- whether the snapshot equals the learner as it was at the last refresh, and whether the learner moved since;
- on relay batches, the largest gap between ``behavior_per_token_logps`` and an independent forward of a plain
  (unpartitioned) copy of the gathered snapshot, and the same gap to the gathered learner (which tells the two apart
  once the learner moved);
- the largest prefix |log r| that reached the loss (log pi_theta of the loss forward minus the Eq. 5 denominator).

Every rank writes RESULT.rank<r>.json, the main process RESULT.json (the log history); the run ends with
`common.end_run` (barrier, then `os._exit`).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    RecordingTrainer,
    batch_summary,
    end_run,
    rank_result_path,
    reference_logps,
    script_args,
    toy_trainer,
    write_json,
)
from zero3_train import partition_report  # noqa: E402

MAX_STEPS = 3
REFRESH_INTERVAL = 3
MODEL = "smollm2-135m-instruct"
# The prompts and reward of tests/test_real_model.py (not imported from there: that module builds vLLM's test marker).
SYSTEM = "Answer with the number only."


def answer_reward(completions, answer, **kwargs):
    """1 when the reply holds the right number, plus the share of digits in it (as in tests/test_real_model.py)."""
    texts = [c[0]["content"] for c in completions]
    return [float(a in t) + sum(ch.isdigit() for ch in t) / max(1, len(t)) for t, a in zip(texts, answer, strict=True)]


def gathered(model):
    """``(name, full parameter)`` of ``model``, one parameter gathered at a time (a collective)."""
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            yield name, param.detach()


class RealZeRO3Trainer(RecordingTrainer):
    """Adds the gathered-weight checks of the module docstring to each training batch's record, and the largest
    prefix |log r| of each loss to ``loss_prefix_log_ratio``."""

    def __init__(self, *args, plain_model, **kwargs):
        super().__init__(*args, training_only=True, **kwargs)
        self.plain = plain_model  # an unpartitioned model of the same architecture, for independent forwards
        self.at_refresh: dict[str, torch.Tensor] = {}  # the learner gathered at the last refresh
        self.loss_prefix_log_ratio: list[float | None] = []

    def _log_segment_statistics(self, inputs, capture):
        prefix = (inputs["prefix_mask"] * inputs["completion_mask"]).bool()
        value = None
        if prefix.any():  # a relay batch: the Eq. 5 denominator is in the inputs
            value = float((capture.per_token_logps - inputs["old_per_token_logps"])[prefix].abs().max())
        self.loss_prefix_log_ratio.append(value)
        super()._log_segment_statistics(inputs, capture)

    def _independent_logps(self, model, output) -> torch.Tensor:
        """log-probs of the batch's completion tokens from a plain forward of ``model``'s gathered weights."""
        plain = dict(self.plain.named_parameters())
        with torch.no_grad():
            for name, full in gathered(model):
                plain[name].copy_(full)
        logps, _ = reference_logps(
            self.plain,
            output["prompt_ids"],
            output["prompt_mask"],
            output["completion_ids"],
            output["completion_mask"],
            self.temperature,
        )
        return logps

    def record_after(self, record):
        output = record["batch"]
        learner = self.accelerator.unwrap_model(self.model)
        snapshot = dict(gathered_copies(self.behavior.snapshot))
        checks = {}
        if record["age"] == 0:
            self.at_refresh = dict(gathered_copies(learner))
            checks["snapshot_equals_learner"] = all(torch.equal(snapshot[n], t) for n, t in self.at_refresh.items())
        else:
            checks["snapshot_frozen"] = all(torch.equal(snapshot[n], t) for n, t in self.at_refresh.items())
            # A list, not any(): every rank must run every gather (a collective), whatever it finds.
            moved = [not torch.equal(full, self.at_refresh[n]) for n, full in gathered(learner)]
            checks["learner_moved"] = any(moved)
            prefix = output["prefix_mask"].bool()
            got = output["behavior_per_token_logps"]
            behavior = self._independent_logps(self.behavior.snapshot, output)
            checks["behavior_logps_max_error"] = float((got[prefix] - behavior[prefix]).abs().max())
            checks["behavior_logps_zero_outside_prefix"] = bool(torch.all(got[~prefix] == 0))
            learner_logps = self._independent_logps(learner, output)
            checks["learner_gap"] = float((got[prefix] - learner_logps[prefix]).abs().max())
        return {"checks": checks}


def gathered_copies(model):
    for name, full in gathered(model):
        yield name, full.to("cpu", copy=True)


def main(result_path: str) -> int:
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from trl_soup.arithmetic import arithmetic_rows
    from trl_soup.models import fetch_model

    model_dir = str(fetch_model(MODEL))
    torch.set_num_threads(1)
    output_dir = os.path.join(os.path.dirname(os.path.abspath(result_path)), "zero3_out")
    args = script_args(
        output_dir,
        max_steps=MAX_STEPS,
        behavior_refresh_interval=REFRESH_INTERVAL,
        prefix_ratio=0.5,
        per_device_train_batch_size=2,  # one prompt per rank, 2 completions of at most 12 tokens: a short run
        num_generations=2,
        max_completion_length=12,
        temperature=0.8,
        learning_rate=1e-4,
        lr_scheduler_type="linear",
        warmup_steps=2,  # the first optimizer step has learning rate 0
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)  # partitioned while it loads
    loaded_partitioned = all(hasattr(p, "ds_id") for p in model.parameters())  # never whole on one rank
    plain = LlamaForCausalLM(AutoConfig.from_pretrained(model_dir)).eval()  # a plain constructor: not partitioned
    assert not any(hasattr(p, "ds_id") for p in plain.parameters())
    rows = arithmetic_rows("train", size=4)
    dataset = Dataset.from_dict(
        {
            "prompt": [
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["problem"]}] for r in rows
            ],
            "answer": [r["answer"] for r in rows],
        }
    )
    trainer = toy_trainer(
        RealZeRO3Trainer, model, args, dataset, tokenizer, reward_funcs=answer_reward, plain_model=plain
    )
    accelerator = trainer.accelerator
    trainer.train()

    learner = accelerator.unwrap_model(trainer.model)
    report = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "zero_stage": accelerator.state.deepspeed_plugin.zero_stage,
        "loaded_partitioned": loaded_partitioned,
        "learner_partition": partition_report(learner),
        "snapshot_partition": partition_report(trainer.behavior.snapshot),
        "batches": [
            {**batch_summary(record), **record["checks"], "loss_prefix_log_ratio": log_ratio}
            for record, log_ratio in zip(trainer.records, trainer.loss_prefix_log_ratio, strict=True)
        ],
    }
    write_json(rank_result_path(result_path, accelerator.process_index), report)
    if accelerator.is_main_process:
        write_json(result_path, {"log_history": trainer.state.log_history})
    return 0


if __name__ == "__main__":
    end_run(main(sys.argv[1]))
