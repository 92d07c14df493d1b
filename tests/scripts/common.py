"""Settings shared by the multi-process test scripts (imported from the script's own folder, which `accelerate
launch` puts first on sys.path)."""

from __future__ import annotations

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
