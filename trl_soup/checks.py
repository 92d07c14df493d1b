"""SOUPTrainer's refusals and warnings: from its arguments alone (before GRPOTrainer loads the model), and those
that need what GRPOTrainer built (the accelerator, the processor)."""

from __future__ import annotations

import warnings

from accelerate.utils import is_peft_model

from .behavior.server_client import check_reachable
from .sources import source_names
from .validation import check_local_peft_zero3, check_lora_needs_peft


def check_trainer_arguments(args, arguments: dict) -> None:
    """Raise ValueError, naming the option and what is allowed, for combinations SOUPTrainer cannot run.

    Args:
        args: the SOUPConfig.
        arguments: GRPOTrainer.__init__'s arguments by name (``inspect.signature(...).bind_partial(...).arguments``).
    """
    model = arguments.get("model")
    relay = args.behavior_refresh_interval > 1  # T = 1 is plain DAPO: every GRPOTrainer option applies
    if relay:
        _check_single_turn(arguments)
    peft = arguments.get("peft_config") is not None or (not isinstance(model, str) and is_peft_model(model))
    if relay and args.behavior_backend == "vllm_server":
        check_lora_needs_peft(args.behavior_refresh_method, peft)
    _check_prompt_columns(arguments)
    used = source_names(args)
    if relay and "dataset" in used:
        _check_dataset_source_columns(args, arguments)
    plugin = args.deepspeed_plugin
    if relay and plugin is not None and plugin.zero_stage == 3:
        _check_zero3(args, peft, used)
    if relay and "teacher" in used:
        check_reachable(args.prefix_teacher_base_url, args.behavior_server_connect_timeout, server="teacher")
    if relay and args.behavior_backend == "vllm_server":  # last (it waits): an unreachable server fails fast
        check_reachable(args.behavior_server_url, args.behavior_server_connect_timeout)


def _check_single_turn(arguments: dict) -> None:
    for option in ("rollout_func", "tools", "environment_factory"):
        if arguments.get(option):  # None and an empty tool list both mean "not used"
            raise ValueError(
                f"{option} cannot be used with SOUPTrainer: relay sampling writes each completion with the "
                f"behavior copy and the current policy, a single-turn plain generation. Allowed value: None (or "
                "behavior_refresh_interval=1: plain DAPO, as GRPOTrainer)."
            )


def _check_prompt_columns(arguments: dict) -> None:
    for split in ("train_dataset", "eval_dataset"):
        columns = getattr(arguments.get(split), "column_names", None)  # a Dataset (an IterableDataset may not know)
        # With an environment_factory (allowed at T = 1) the environment, not a column, may supply the prompts.
        if isinstance(columns, list) and "prompt" not in columns and not arguments.get("environment_factory"):
            raise ValueError(
                f"{split} has no 'prompt' column (found: {columns}). SOUPTrainer, like GRPOTrainer, samples a "
                "completion for each row's 'prompt': rename the column holding the prompts, e.g. "
                "dataset.rename_column('question', 'prompt')."
            )


def _check_zero3(args, peft: bool, used: list[str]) -> None:
    """What relay batches under DeepSpeed ZeRO-3 do not support in this release (``peft``: a peft_config or a
    PeftModel)."""
    check_local_peft_zero3(args.behavior_backend, peft, zero3=True)  # before the model loads
    local = args.behavior_backend == "local"
    if local and args.cast_lm_head_to_fp32:
        raise ValueError(
            "cast_lm_head_to_fp32=True with behavior_backend='local' is not supported under DeepSpeed ZeRO-3 in "
            "this release (the partitioned behavior copy is built in one dtype). Allowed: cast_lm_head_to_fp32="
            "False under ZeRO-3, ZeRO-1/2 or DDP with the cast, or behavior_backend='vllm_server'."
        )
    if args.behavior_pool_size > 1:
        raise ValueError(
            f"behavior_pool_size={args.behavior_pool_size} is not supported under DeepSpeed ZeRO-3 in this release "
            "(each member's sampling would be a collective over rows that differ between ranks). Allowed: "
            "behavior_pool_size=1 under ZeRO-3, or a pool under DDP or ZeRO-1/2."
        )
    if set(used) - {"behavior", "on_policy"}:
        raise ValueError(
            f"prefix sources {sorted(set(used) - {'behavior', 'on_policy'})} are not supported under DeepSpeed ZeRO-3 "
            "in this release (the dataset scorer would be a partitioned copy; not tested). Allowed: "
            "prefix_source='behavior' under ZeRO-3, or these sources under DDP or ZeRO-1/2."
        )


REFERENCE_PROBE_ROWS = 1000  # rows of the dataset source's column read before the model loads


def _check_dataset_source_columns(args, arguments: dict) -> None:
    """The dataset prefix source reads ``prefix_dataset_column`` (and ``prefix_logps_column``) of the training data:
    refuse data sets that lack them, naming the columns found."""
    columns = getattr(arguments.get("train_dataset"), "column_names", None)
    if not isinstance(columns, list):  # an IterableDataset may not know its columns: checked at the first batch
        return
    for option in ("prefix_dataset_column", "prefix_logps_column"):
        name = getattr(args, option)
        if name is not None and name not in columns:
            raise ValueError(
                f"{option}={name!r} is not a column of train_dataset (found: {columns}). prefix_source 'dataset' "
                f"cuts each relay prefix from that column: name the column that holds the "
                f"{'reference completions' if option == 'prefix_dataset_column' else 'per-token log-probs'}."
            )
    column = args.prefix_dataset_column
    if column is None:
        return
    head = arguments["train_dataset"].select_columns([column])[:REFERENCE_PROBE_ROWS][column]
    if head and all(value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0) for value in head):
        raise ValueError(
            f"prefix_dataset_column={column!r} holds no reference completion in the first {len(head)} rows of "
            "train_dataset (all None or empty): every dataset row would fall back to "
            f"prefix_dataset_fallback={args.prefix_dataset_fallback!r}, so the relay batches would quietly not use "
            "the data set. Fill the column, or use another prefix_source."
        )


def check_trainer_setup(trainer) -> None:
    """Refuse, or warn about, settings known only once GRPOTrainer is built (called at the end of ``__init__``)."""
    args = trainer.args
    relay = args.behavior_refresh_interval > 1
    if relay and trainer.is_fsdp_enabled:
        raise ValueError(
            "SOUPTrainer does not support FSDP in this release (the accelerate config asks for it): the behavior "
            "copy and its refresh are written for unsharded or DeepSpeed ZeRO-3 parameters. Use DDP or DeepSpeed "
            "ZeRO-1/2/3."
        )
    if relay and trainer._is_vlm:
        raise ValueError(
            "SOUPTrainer's relay batches support text-only models in this release; got a "
            "vision-language processor. Allowed: a text model, or behavior_refresh_interval=1."
        )
    every = args.steps_per_generation * trainer.num_iterations
    if args.old_logps_from_loss_forward is True and (
        args.gradient_accumulation_steps % every != 0
        or (trainer.use_vllm and trainer.vllm_importance_sampling_correction)
    ):
        warnings.warn(
            "old_logps_from_loss_forward=True has no effect with these settings: TRL computes pi_old itself "
            f"(num_iterations={trainer.num_iterations}, steps_per_generation={args.steps_per_generation}, "
            f"gradient_accumulation_steps={args.gradient_accumulation_steps}, use_vllm={trainer.use_vllm}), because "
            "the weights change between generation and the loss or vLLM's importance-sampling correction needs it.",
            UserWarning,
            stacklevel=3,
        )


def warn_unscored_rewards(rewards_per_func, reward_func_names: list[str]) -> None:
    """Warn, naming the reward function, when it returned None or NaN for every completion of a batch.

    Args:
        rewards_per_func: ``(N, num_reward_funcs)`` rewards of the whole batch (gathered over processes; TRL turns
            None into NaN).
        reward_func_names: TRL's names of the reward functions, in column order.
    """
    empty = [
        name
        for name, column in zip(reward_func_names, rewards_per_func.isnan().all(dim=0).tolist(), strict=True)
        if column
    ]
    for name in empty:
        everything = len(empty) == len(reward_func_names)
        consequence = (
            "no completion of the batch has a reward, so the loss is 0 and nothing is learned"
            if everything
            else "it adds nothing to the advantages of this batch"
        )
        warnings.warn(
            f"Reward function {name!r} returned None or NaN for every completion of a generation batch: "
            f"{consequence}. Check that it returns one float per completion (None only for completions it cannot "
            "score).",
            UserWarning,
            stacklevel=2,
        )
