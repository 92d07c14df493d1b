"""What the multi-process test scripts share (imported from the script's own folder, which `accelerate launch` puts
first on sys.path): the test helpers of tests/testing_utils.py (this module puts tests/ on sys.path for them), a
trainer on the toy task, a summary of a recorded batch, and the per-rank result files and exit of a run."""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:
    sys.path.insert(1, TESTS_DIR)  # after the script's folder, as pytest puts it for the test files

from testing_utils import (  # noqa: E402
    RecordingTrainer,
    learner_probe_logps,
    probe_logps,
    reference_logps,
    script_args,
    toy_trainer,
)

from trl_soup.cli.train import end_distributed_process  # noqa: E402
from trl_soup.toy import char_match_reward  # noqa: E402

__all__ = [
    "RecordingTrainer",
    "batch_summary",
    "end_run",
    "learner_probe_logps",
    "probe_logps",
    "rank_result_path",
    "reference_logps",
    "script_args",
    "script_trainer",
    "write_json",
]


def script_trainer(model, args, dataset, tokenizer, trainer_class=RecordingTrainer, **kwargs):
    """A `trainer_class` (by default a `RecordingTrainer`) on the toy task of the scripts: `toy_trainer` with
    `char_match_reward` as the reward."""
    return toy_trainer(trainer_class, model, args, dataset, tokenizer, reward_funcs=char_match_reward, **kwargs)


def batch_summary(record: dict) -> dict:
    """The JSON-able facts of a `RecordingTrainer` record that the DDP and ZeRO-3 reports share."""
    batch = record["batch"]
    return {
        "age": record["age"],
        "relay_record": record["relay"] is not None,
        "prefix_tokens": int((batch["prefix_mask"] * batch["completion_mask"]).sum()),
        "completion_tokens": int(batch["completion_mask"].sum()),
        "has_old_per_token_logps": batch.get("old_per_token_logps") is not None,
    }


def rank_result_path(result_path: str, rank: int) -> str:
    """Where rank `rank` writes its own report next to `result_path` (`result.json` -> `result.rank1.json`);
    tests/launch.py `launch_for_result` reads them back into `result["ranks"]`."""
    stem, ext = os.path.splitext(result_path)
    return f"{stem}.rank{rank}{ext}"


def write_json(path: str, obj) -> None:
    """Write `obj` as JSON atomically (a reader never sees half a file)."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def end_run(code: int) -> NoReturn:
    """End a multi-process script with exit status `code`: `trl_soup.cli.train.end_distributed_process` (a barrier,
    then `os._exit`, as the training recipe ends). Every rank writes its own files before calling this (no
    `all_gather_object` of the reports): once the barrier returns, every peer has finished its collectives and written
    them."""
    end_distributed_process(code)
