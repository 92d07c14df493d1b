"""Two-process DeepSpeed ZeRO-3 run with the behavior copy on a vLLM server ("disk" refresh), launched by
tests/test_vllm_server.py:

    accelerate launch --config_file recipes/accelerate_configs/cpu_zero3.yaml tests/scripts/zero3_vllm_refresh.py \
        MODEL_DIR SERVER_URL RESULT.json

The learner (loaded from MODEL_DIR, the model the server serves) is partitioned across the two ranks. After every
refresh the main process asks the server for its log-probs of a fixed sequence and compares them with a forward of the
learner's gathered weights: the refresh must have gathered the partitions (a partitioned state dict would be empty
tensors). Every rank gathers; the main process writes RESULT.json.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import deepspeed  # noqa: E402
import torch  # noqa: E402
from common import learner_probe_logps, probe_logps, script_args, script_trainer  # noqa: E402

from trl_soup import SOUPTrainer  # noqa: E402
from trl_soup.toy import build_dataset, build_tokenizer  # noqa: E402


def main(model_dir: str, url: str, result_path: str) -> int:
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    args = script_args(
        os.path.join(os.path.dirname(os.path.abspath(result_path)), "out"),
        max_steps=3,
        behavior_refresh_interval=2,
        learning_rate=5e-2,
        behavior_backend="vllm_server",
        behavior_server_base_url=url,
        behavior_refresh_method="disk",
    )
    trainer = script_trainer(model_dir, args, build_dataset(32, seed=0), tokenizer, SOUPTrainer)
    learner = trainer.accelerator.unwrap_model(trainer.model)
    partitioned = sum(1 for p in learner.parameters() if hasattr(p, "ds_numel") and p.data.numel() == 0)
    checks = []
    refresh = trainer.behavior.refresh

    def checked_refresh():
        refresh()
        with deepspeed.zero.GatheredParameters(list(learner.parameters())):  # every rank
            expected = learner_probe_logps(learner, tokenizer).tolist()
        if trainer.accelerator.is_main_process:
            served = probe_logps(url, tokenizer, trainer.behavior.model_name).tolist()
            checks.append({"expected": expected, "served": served})

    trainer.behavior.refresh = checked_refresh
    trainer.train()
    if trainer.accelerator.is_main_process:
        with open(result_path, "w") as f:
            json.dump(
                {
                    "partitioned": partitioned,
                    "checks": checks,
                    "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage,
                },
                f,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
