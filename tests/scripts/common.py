"""Settings shared by the multi-process test scripts (imported from the script's own folder, which `accelerate
launch` puts first on sys.path)."""

from __future__ import annotations

import json
import os
import sys
from typing import NoReturn

import torch.distributed as dist

from trl_soup import SOUPConfig

# The small, fast, deterministic CPU run every multi-process script starts from; each script overrides what it tests.
SCRIPT_DEFAULTS = dict(
    use_cpu=True,
    report_to="none",
    bf16=False,
    per_device_train_batch_size=4,
    num_generations=4,
    max_completion_length=8,
    learning_rate=5e-3,
    temperature=1.0,
    logging_steps=1,
    save_strategy="no",
    seed=0,
    data_seed=0,
    disable_tqdm=True,
    dataloader_num_workers=0,
)


def script_args(output_dir: str, **overrides) -> SOUPConfig:
    """`SOUPConfig(output_dir, **SCRIPT_DEFAULTS)` with `overrides` applied."""
    return SOUPConfig(output_dir=output_dir, **{**SCRIPT_DEFAULTS, **overrides})


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
    """End a multi-process script with exit status `code`: a barrier, then `os._exit`.

    Every rank writes its own files before calling this (no `all_gather_object` of the reports). The barrier is the
    last collective: once it returns, every peer has finished its collectives and written its files. `os._exit` then
    skips interpreter finalisation and C++ static destructors, which on these runs would tear down with the gloo
    process group still alive: `destroy_process_group` does not stop gloo's worker and transport threads
    (`pt_gloo_runloop`, `gloo_tcp_loop` are still running after it, the DDP / DeepSpeed wrappers keep the group), so
    an exit-time teardown races those threads; on a busy 2-core machine that race ended in SIGABRT ("terminate called
    without an active exception") after training had finished. Nothing of value is lost: the results are on disk
    and closed, and stdout / stderr are flushed here.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
