"""recipes/soup_math.py: the paper's YAML configs parse to the paper's values, the data formats build the right prompt
and reference answer, and the recipe trains end to end on a tiny local model (SOUP, GRPO baseline, 2-process DDP)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from launch import QUIET, launcher, run_python

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "soup_math.py"
CONFIGS = ROOT / "recipes" / "configs"
NUM_PAPER_PROCESSES = 8  # the paper's runs: 8 GPUs


def _load_recipe():
    spec = importlib.util.spec_from_file_location("soup_math", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soup_math"] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


def _parse(args):
    if not torch.cuda.is_available():
        args = [*args, "--use_cpu"]  # the YAMLs ask for bf16, which TrainingArguments refuses on a CPU-only host
    return recipe.make_parser(recipe.choose_trainer(args)).parse_args_and_config(args)


# ---------------------------------------------------------------------------------------------------- (a) YAML configs
PAPER_SETUPS = {
    # config stem: (model, data set, prefix_ratio, T, max_completion_length, max_train_samples)  -- paper Sec. 4
    "qwen2.5-math-7b_dapo-math-17k": ("Qwen/Qwen2.5-Math-7B", "open-r1/DAPO-Math-17k-Processed", 0.5, 8, 4096, None),
    "r1-distill-qwen-1.5b_openr1-math-46k": (
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "Elliott/Openr1-Math-46k-8192",
        0.3,
        4,
        8192,
        4608,
    ),
}


DATASET_SOURCE_CONFIG = "r1-distill-qwen-1.5b_openr1-math-46k_soup_dataset"  # issue 14: R1 traces as prefixes
REAL_MODEL_SETUP = "smollm2-135m_arith"  # the registry's real model on the local arithmetic task, scaled to a CPU


def test_every_config_file_is_covered():
    stems = {p.stem for p in CONFIGS.glob("*.yaml")}
    paper = {f"{setup}_{kind}" for setup in PAPER_SETUPS for kind in ("soup", "dapo")}
    assert stems == paper | {DATASET_SOURCE_CONFIG, f"{REAL_MODEL_SETUP}_soup", f"{REAL_MODEL_SETUP}_dapo"}


def test_real_model_configs_are_a_fair_pair_on_the_cpu():
    from trl import GRPOConfig

    from trl_soup import SOUPConfig
    from trl_soup.arithmetic import DATASET_NAME

    parsed = {
        kind: _parse(["--config", str(CONFIGS / f"{REAL_MODEL_SETUP}_{kind}.yaml")]) for kind in ("soup", "dapo")
    }
    (_, soup_args, _), (_, dapo_args, _) = parsed["soup"], parsed["dapo"]
    assert type(soup_args) is SOUPConfig and type(dapo_args) is GRPOConfig
    assert (soup_args.prefix_strategy, soup_args.prefix_ratio, soup_args.behavior_refresh_interval) == (
        "ratio",
        0.5,
        4,
    )
    for script, args, model_args in parsed.values():
        assert model_args.model_name_or_path == "smollm2-135m-instruct" and script.dataset_name == DATASET_NAME
        assert args.use_cpu and not args.bf16 and not args.use_vllm
        assert (args.loss_type, args.epsilon, args.epsilon_high, args.beta) == ("dapo", 0.2, 0.28, 0.0)
        # 2 prompts x 8 samples per optimizer step, generated in one batch (T counts optimizer steps)
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 16 == args.generation_batch_size
        assert args.num_generations == 8 and args.max_completion_length == 64
    soup_values, dapo_values = soup_args.to_dict(), dapo_args.to_dict()
    assert {k for k in dapo_values if soup_values[k] != dapo_values[k]} <= {"output_dir", "logging_dir", "run_name"}


def test_dataset_source_config_is_the_soup_config_with_two_sources(tokenizer):
    from trl_soup.sources import reference_token_ids, source_weights

    script, args, model_args = _parse(["--config", str(CONFIGS / f"{DATASET_SOURCE_CONFIG}.yaml")])
    base_script, base_args, _ = _parse(["--config", str(CONFIGS / "r1-distill-qwen-1.5b_openr1-math-46k_soup.yaml")])
    assert script.reference_column == "target" and script.dataset_name == base_script.dataset_name
    assert source_weights(args) == {"behavior": 0.5, "dataset": 0.5}
    assert args.prefix_dataset_column == "reference_completion" and args.prefix_dataset_fallback == "behavior"
    ours, theirs = args.to_dict(), base_args.to_dict()
    differing = {k for k in theirs if ours[k] != theirs[k]}
    assert differing <= {"output_dir", "logging_dir", "run_name", "prefix_source_weights", "prefix_dataset_fallback"}
    # The recipe keeps the trace (chat messages) as reference_completion; the dataset source reads its assistant text.
    row = ROWS["Elliott/Openr1-Math-46k-8192"]
    prepared = _prepare("Elliott/Openr1-Math-46k-8192", [row], reference_column="target")[0]
    assert prepared["reference_completion"] == row["target"]
    ids = reference_token_ids(prepared["reference_completion"], tokenizer, tokenizer.eos_token_id, "reference")
    assert ids == tokenizer(row["target"][0]["content"], add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    with pytest.raises(ValueError, match="Column 'trace' is not in the data set"):
        _prepare("Elliott/Openr1-Math-46k-8192", [row], reference_column="trace")


@pytest.mark.parametrize("setup", sorted(PAPER_SETUPS))
def test_configs_parse_to_the_paper_settings(setup):
    from trl import GRPOConfig

    from trl_soup import SOUPConfig

    model, dataset, ratio, refresh_interval, completion_length, samples = PAPER_SETUPS[setup]
    parsed = {kind: _parse(["--config", str(CONFIGS / f"{setup}_{kind}.yaml")]) for kind in ("soup", "dapo")}
    (soup_script, soup_args, _), (dapo_script, dapo_args, _) = parsed["soup"], parsed["dapo"]

    assert soup_script.trainer == "soup" and type(soup_args) is SOUPConfig
    assert dapo_script.trainer == "grpo" and type(dapo_args) is GRPOConfig  # TRL's own config: the honest baseline
    assert (soup_args.prefix_strategy, soup_args.prefix_ratio, soup_args.behavior_refresh_interval) == (
        "ratio",
        ratio,
        refresh_interval,
    )
    # Aligned generation (checked below), so pi_old can come from the loss forward: one forward fewer per relay batch.
    assert soup_args.old_logps_from_loss_forward is True
    for script, args, model_args in parsed.values():
        assert model_args.model_name_or_path == model and script.dataset_name == dataset
        assert script.max_train_samples == samples
        assert args.max_completion_length == completion_length
        assert (args.loss_type, args.epsilon, args.epsilon_high, args.beta) == ("dapo", 0.2, 0.28, 0.0)
        assert args.learning_rate == 1e-6 and args.num_generations == 8 and not args.use_vllm
        # 32 prompts x 8 samples = 256 completions per optimizer step on 8 processes, generated in one batch
        per_step = args.per_device_train_batch_size * NUM_PAPER_PROCESSES * args.gradient_accumulation_steps
        per_generation = args.per_device_train_batch_size * NUM_PAPER_PROCESSES * args.steps_per_generation
        assert per_step == per_generation == 256
        assert per_step // args.num_generations == 32
        assert args.num_iterations == 1
    # Fair comparison: every GRPO field equal between SOUP and its baseline, except where the runs are written.
    soup_values, dapo_values = soup_args.to_dict(), dapo_args.to_dict()
    differing = {k for k in dapo_values if soup_values[k] != dapo_values[k]}
    assert differing <= {"output_dir", "logging_dir", "run_name"}, differing


def test_a_soup_option_is_refused_for_the_grpo_baseline():
    with pytest.raises(ValueError, match="behavior_refresh_interval"):
        _parse(["--trainer", "grpo", "--output_dir", "x", "--behavior_refresh_interval", "2"])


def test_bad_options_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"trainer='ppo'.*\['soup', 'grpo'\]"):
        recipe.choose_trainer(["--trainer", "ppo"])
    with pytest.raises(ValueError, match="dataset_format='dapo'.*Allowed values"):
        recipe.MathScriptArguments(dataset_name="x", dataset_format="dapo")
    with pytest.raises(ValueError, match="max_train_samples=0"):
        recipe.MathScriptArguments(dataset_name="x", max_train_samples=0)


def test_baseline_without_yaml_keeps_clip_higher():
    """GRPOConfig's own epsilon_high default is None; the recipe applies the paper's 0.28 to both trainers."""
    _, args, _ = _parse(["--trainer", "grpo", "--output_dir", "x"])
    assert (args.loss_type, args.epsilon_high, args.beta) == ("dapo", 0.28, 0.0)


# ---------------------------------------------------------------------------------- (b) prompts, columns and reward
PROBLEM = "Let $x$ be the sum of 3 and 4. Find $x$."
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DAPO_WRAPPED = (
    "Solve the following math problem step by step. The last line of your response should be of the form Answer: "
    "$Answer (without quotes) where $Answer is the answer to the problem.\n\n"
    + PROBLEM
    + '\n\nRemember to put your answer on its own line after "Answer:".'
)
# One row per data set, in the layout the Hub copies use (see DATASET_FORMATS for the sources).
ROWS = {
    "open-r1/DAPO-Math-17k-Processed": {"prompt": DAPO_WRAPPED, "solution": "7", "data_source": "math_dapo"},
    "BytedTsinghua-SIA/DAPO-Math-17k": {
        "prompt": [{"role": "user", "content": DAPO_WRAPPED}],
        "reward_model": {"ground_truth": "7", "style": "rule-lighteval/MATH_v2"},
    },
    "Elliott/Openr1-Math-46k-8192": {
        "prompt": [{"role": "system", "content": "Think first."}, {"role": "user", "content": PROBLEM}],
        "target": [{"role": "assistant", "content": "<think>3 + 4 = 7</think> \\boxed{7}"}],
        "reward_model": {"ground_truth": "7", "style": "rule"},
    },
    "my/local-copy": {"problem": PROBLEM, "answer": "7"},
}


def _prepare(name, rows, conversational=True, **script_overrides):
    from datasets import Dataset

    script_args = recipe.MathScriptArguments(dataset_name=name, **script_overrides)
    return recipe.prepare_dataset(Dataset.from_list(rows), script_args, conversational, seed=0)


def test_build_prompt():
    assert recipe.build_prompt(PROBLEM, conversational=False) == f"{PROBLEM}\n{INSTRUCTION}"
    assert recipe.build_prompt(PROBLEM, conversational=True) == [
        {"role": "user", "content": f"{PROBLEM}\n{INSTRUCTION}"}
    ]
    assert recipe.build_prompt(PROBLEM, conversational=True, system_prompt="Be brief.")[0] == {
        "role": "system",
        "content": "Be brief.",
    }


@pytest.mark.parametrize("name", sorted(ROWS))
def test_each_format_maps_problem_and_answer_into_prompt_and_solution(name):
    from trl_soup.rewards import math_accuracy_reward

    dataset = _prepare(name, [ROWS[name]])
    assert dataset.column_names == ["prompt", "solution"]
    row = dataset[0]
    assert row["prompt"] == [{"role": "user", "content": f"{PROBLEM}\n{INSTRUCTION}"}]  # the DAPO wrapper is gone
    # The reward reads the mapped `solution` column, with TRL's conversational completions.
    completions = [
        [{"role": "assistant", "content": f"3 + 4 = 7, so the answer is $\\boxed{{{answer}}}$."}]
        for answer in ("7", "8", "\\frac{14}{2}")
    ]
    assert math_accuracy_reward(completions, [row["solution"]] * 3) == [1.0, 0.0, 1.0]


def test_dataset_format_and_column_overrides():
    openr1 = ROWS["Elliott/Openr1-Math-46k-8192"]
    # A local copy of a known data set: its format by name.
    row = _prepare("/data/openr1.parquet", [openr1], dataset_format="Elliott/Openr1-Math-46k-8192")[0]
    assert row["solution"] == "7"
    # Column overrides, plain-text prompts.
    custom = {"question": PROBLEM, "meta": {"final": "7"}}
    row = _prepare("my/custom", [custom], conversational=False, problem_column="question", answer_column="meta.final")[
        0
    ]
    assert row == {"prompt": f"{PROBLEM}\n{INSTRUCTION}", "solution": "7"}
    with pytest.raises(ValueError, match="'problem'.*--problem_column"):
        _prepare("my/custom", [custom])


def test_max_train_samples_draws_a_seeded_subset():
    rows = [{"problem": f"What is {i}+1?", "answer": str(i + 1)} for i in range(20)]
    first = _prepare("my/local", rows, max_train_samples=5)
    again = _prepare("my/local", rows, max_train_samples=5)
    assert len(first) == 5 and first["solution"] == again["solution"]
    assert first["solution"] != [str(i + 1) for i in range(5)]  # drawn at random, not the first rows
    assert set(first["solution"]) <= {r["answer"] for r in rows}


# ------------------------------------------------------------------------------------ (c, d, e) end-to-end runs
MAX_STEPS, REFRESH_INTERVAL = 3, 2


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """The toy tiny model saved to disk and 16 "What is a+b?" rows as jsonl (nothing downloaded)."""
    from trl_soup.toy import build_tiny_model, build_tokenizer

    root = tmp_path_factory.mktemp("soup_math")
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, seed=0).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    with open(root / "data.jsonl", "w") as f:
        for i in range(16):
            a, b = i % 7 + 1, i // 2 + 3
            f.write(json.dumps({"problem": f"What is {a}+{b}?", "answer": str(a + b)}) + "\n")
    return root


def _run(tiny_setup, name, extra, accelerate_config=None, per_device_batch=8):
    """The recipe on the tiny setup (under `accelerate launch` with `accelerate_config` if given), checked to have
    trained MAX_STEPS steps on a 0/1 reward and saved the model; returns (reward logs, saved args, stdout)."""
    out = tiny_setup / name
    command = [
        *(launcher(accelerate_config) if accelerate_config else []), RECIPE,
        "--model_name_or_path", str(tiny_setup / "model"), "--dataset_name", str(tiny_setup / "data.jsonl"),
        "--output_dir", str(out), "--max_steps", str(MAX_STEPS),
        "--per_device_train_batch_size", str(per_device_batch),
        "--num_generations", "4", "--max_completion_length", "8", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--seed", "0", *extra,
    ]  # fmt: skip
    result = run_python(command, cwd=tiny_setup, env=QUIET, timeout=600)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}"
    with open(out / "trainer_state.json") as f:
        logs = [h for h in json.load(f)["log_history"] if "reward" in h]
    assert [h["step"] for h in logs] == list(range(1, MAX_STEPS + 1))
    for h in logs:  # the references parsed (an unparsable one gives NaN) and the reward is a 0/1 accuracy
        assert math.isfinite(h["rewards/math_accuracy_reward/mean"]) and 0.0 <= h["reward"] <= 1.0
    assert (out / "model.safetensors").exists()
    args = torch.load(out / "training_args.bin", weights_only=False)
    return logs, args, result.stdout


def _check_relay_schedule(logs):
    # T = 2 with one generation batch per step: refresh (on-policy), relay, refresh
    assert [h["soup/relay_batch"] for h in logs] == [0.0, 1.0, 0.0]
    assert [h["soup/behavior_age"] for h in logs] == [0.0, 1.0, 0.0]
    assert 0.0 < logs[1]["soup/prefix_fraction"] < 1.0
    assert logs[0]["soup/prefix_fraction"] == logs[2]["soup/prefix_fraction"] == 0.0


@pytest.mark.slow
def test_soup_recipe_end_to_end(tiny_setup):
    from trl_soup import SOUPConfig

    logs, args, stdout = _run(tiny_setup, "soup", ["--behavior_refresh_interval", str(REFRESH_INTERVAL)])
    _check_relay_schedule(logs)
    assert type(args) is SOUPConfig and args.behavior_refresh_interval == REFRESH_INTERVAL
    assert "trainer=soup" in stdout and "prompt=text" in stdout  # the toy tokenizer has no chat template


@pytest.mark.slow
def test_grpo_baseline_end_to_end(tiny_setup):
    from trl import GRPOConfig

    logs, args, stdout = _run(tiny_setup, "grpo", ["--trainer", "grpo"])
    assert type(args) is GRPOConfig and (args.loss_type, args.epsilon_high) == ("dapo", 0.28)
    assert not any(key.startswith("soup/") for h in logs for key in h)  # TRL's own trainer: no relay sampling
    assert "trainer=grpo" in stdout


def _run_two_process(tiny_setup, name, *more):
    """`_run` of SOUP at T = REFRESH_INTERVAL in 2 processes of 4 per device, under `accelerate launch` with
    recipes/accelerate_configs/cpu_<name>.yaml, into <tiny_setup>/<name>."""
    extra = ["--behavior_refresh_interval", str(REFRESH_INTERVAL), *more]
    return _run(tiny_setup, name, extra, accelerate_config=f"cpu_{name}.yaml", per_device_batch=4)


@pytest.mark.slow
def test_soup_recipe_two_process_ddp(tiny_setup):
    """accelerate launch with recipes/accelerate_configs/cpu_ddp.yaml (2 gloo processes; the run passes --use_cpu)."""
    logs, args, _ = _run_two_process(tiny_setup, "ddp")
    _check_relay_schedule(logs)
    # 4 completions per rank and step, 2 ranks: 8 completions of 4 samples = 2 prompts per step over both ranks
    assert args.generation_batch_size == 8  # per_device 4 x 2 processes x 1 step per generation: both ranks counted


@pytest.mark.slow
def test_soup_recipe_two_process_zero3(tiny_setup):
    """accelerate launch with recipes/accelerate_configs/cpu_zero3.yaml (2 processes, DeepSpeed ZeRO-3): the relay
    schedule holds, and the model saved at the end is whole (gathered from the partitions) and trained.
    Partitioning itself is checked inside the run by tests/test_zero3.py."""
    from safetensors.torch import load_file

    # The tiny model answers no problem (every reward 0, every advantage 0): only weight decay moves the weights, so
    # it is what shows that the optimizer stepped on the partitions and the saved model gathered them. (With bf16,
    # GRPOConfig's old default on CPU, the saved bf16 tensors differed from the float32 ones whether trained or not.)
    logs, args, _ = _run_two_process(tiny_setup, "zero3", "--weight_decay", "0.1")
    _check_relay_schedule(logs)
    assert args.generation_batch_size == 8  # both ranks counted
    saved = load_file(tiny_setup / "zero3" / "model.safetensors")
    initial = load_file(tiny_setup / "model" / "model.safetensors")
    assert saved.keys() == initial.keys()
    for name, tensor in initial.items():
        assert saved[name].shape == tensor.shape, name  # no empty ZeRO-3 placeholder was written
    assert any(not torch.equal(saved[name], tensor) for name, tensor in initial.items())  # it trained
