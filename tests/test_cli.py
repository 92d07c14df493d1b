"""The `trl-soup` command: every command's --help, the packaged configs by name, `train` in-process and through
accelerate launch arguments, `toy`'s summary line, and `plot-positions` refusing logs without position statistics.

Runs the installed entry point where it sits next to this interpreter (`pip install -e .` puts it there), else
`python -m trl_soup.cli`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trl_soup.cli import packaged

ROOT = Path(__file__).resolve().parents[1]
_ENTRY = shutil.which("trl-soup", path=str(Path(sys.executable).parent))
CLI = [_ENTRY] if _ENTRY else [sys.executable, "-m", "trl_soup.cli"]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
}
SUMMARY = re.compile(
    r"^\[SOUP\] reward \d\.\d{3} \(first \d+ steps\) -> \d\.\d{3} \(last \d+\), exact match "
    r"\d\.\d{2} -> \d\.\d{2}, \d+ steps in \d+ s; \d+ relay batches, behavior wrote \d+% of their "
    r"tokens$",
    re.MULTILINE,
)


def run_cli(*args, cwd=None, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


# ------------------------------------------------------------------------------------------------------------ --help
@pytest.mark.parametrize(("command", "expected"), [
    ((), ["train", "toy", "evaluate", "plot-positions", "serve-behavior", "models", "configs"]),
    (("train",), ["--config NAME_OR_YAML", "--accelerate_config", "smollm2-135m_arith_soup", "--trainer",
                  "--behavior_refresh_interval", "--dataset_name", "--model_name_or_path"]),
    (("toy",), ["--compare_grpo", "--behavior_refresh_interval"]),
    (("evaluate",), ["--prefix_model_name_or_path", "--num_samples"]),
    (("plot-positions",), ["states", "--steps"]),
    (("serve-behavior",), ["--model", "--enable-lora"]),
    (("configs",), ["--path"]),
])  # fmt: skip
def test_help_exits_0(command, expected):
    done = run_cli(*command, "--help") if command else run_cli("--help")
    assert done.returncode == 0, done.stderr[-3000:]
    for text in expected:
        assert text in done.stdout, (command, text)
    if command:
        assert f"trl-soup {command[0]}" in done.stdout  # usage names the command


def test_no_command_prints_the_commands():
    done = run_cli()
    assert done.returncode == 0 and "serve-behavior" in done.stdout


# ------------------------------------------------------------------------------------------------- packaged configs
def test_packaged_configs_are_the_recipes_configs():
    assert packaged.config_names("training") == sorted(p.stem for p in (ROOT / "recipes" / "configs").glob("*.yaml"))
    assert packaged.config_names("accelerate") == sorted(
        p.stem for p in (ROOT / "recipes" / "accelerate_configs").glob("*.yaml")
    )
    assert {"qwen2.5-math-7b_dapo-math-17k_soup", "r1-distill-qwen-1.5b_openr1-math-46k_dapo"} <= set(
        packaged.config_names("training")
    )
    assert {"single_gpu", "ddp", "zero2", "zero3", "cpu_ddp", "cpu_zero3"} == set(packaged.config_names("accelerate"))


def test_config_names_resolve_and_unknown_names_are_listed(tmp_path):
    path = packaged.resolve_config("zero3", "accelerate")
    assert path == packaged.resolve_config("zero3.yaml", "accelerate") and Path(path).name == "zero3.yaml"
    local = tmp_path / "mine.yaml"
    local.write_text("trainer: soup\n")
    assert packaged.resolve_config(str(local), "training") == str(local)  # a file is used as it is
    with pytest.raises(
        ValueError,
        match=r"--config 'qwen' is neither a file nor a packaged training config.*"
        r"qwen2.5-math-7b_dapo-math-17k_soup",
    ):
        packaged.resolve_config("qwen", "training")
    with pytest.raises(ValueError, match="--accelerate_config 'zero4'.*zero3"):
        packaged.resolve_config("zero4", "accelerate")
    dapo = packaged.resolve_config("qwen2.5-math-7b_dapo-math-17k_dapo", "training")
    for form in (["--config", "qwen2.5-math-7b_dapo-math-17k_dapo"], ["--config=qwen2.5-math-7b_dapo-math-17k_dapo"]):
        assert packaged.resolve_config_argument(["--seed", "1", *form]) == ["--config", dapo, "--seed", "1"]
    assert packaged.resolve_config_argument(["--seed", "1"]) == ["--seed", "1"]


def test_configs_command_lists_and_prints_paths():
    listed = run_cli("configs")
    assert listed.returncode == 0, listed.stderr[-2000:]
    for name in (*packaged.config_names("training"), *packaged.config_names("accelerate")):
        assert f"  {name}\n" in listed.stdout
    printed = run_cli("configs", "--path", "cpu_zero3")
    assert printed.returncode == 0 and Path(printed.stdout.strip()).read_text().startswith("#")
    unknown = run_cli("configs", "--path", "zero4")
    assert unknown.returncode == 2 and "'zero4' is not a packaged config" in unknown.stderr


# ------------------------------------------------------------------------------------------------------------ train
def test_train_reads_a_packaged_config_by_name():
    from trl_soup import SOUPConfig
    from trl_soup.cli import train

    argv = packaged.resolve_config_argument(
        ["--config", "qwen2.5-math-7b_dapo-math-17k_soup", "--max_steps", "3", "--use_cpu"]
    )  # the YAML asks for bf16, refused on a CPU-only host
    script_args, args, model_args = train.make_parser(train.choose_trainer(argv)).parse_args_and_config(argv)
    assert type(args) is SOUPConfig and script_args.trainer == "soup"
    assert (args.prefix_ratio, args.behavior_refresh_interval, args.max_steps) == (0.5, 8, 3)
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-Math-7B"
    baseline = packaged.resolve_config_argument(["--config", "qwen2.5-math-7b_dapo-math-17k_dapo"])
    assert train.choose_trainer(baseline) == "grpo"


def test_train_accelerate_config_becomes_an_accelerate_launch_command():
    from accelerate.commands.launch import launch_command_parser

    from trl_soup.cli import train

    config = packaged.resolve_config("r1-distill-qwen-1.5b_openr1-math-46k_soup", "training")
    argv = ["--config", config, "--num_processes", "2", "--max_steps", "3", "--use_cpu"]
    launch = train.accelerate_launch_arguments(train.make_parser("soup"), argv, "cpu_ddp")
    assert launch == [
        "--config_file",
        packaged.resolve_config("cpu_ddp", "accelerate"),
        "--num_processes",
        "2",
        "--module",
        "trl_soup.cli.train",
        "--config",
        config,
        "--max_steps",
        "3",
        "--use_cpu",
    ]
    parsed = launch_command_parser().parse_args(launch)
    assert parsed.module and parsed.training_script == "trl_soup.cli.train" and parsed.num_processes == 2
    assert parsed.training_script_args == ["--config", config, "--max_steps", "3", "--use_cpu"]


def test_train_refuses_an_unknown_config_name():
    done = run_cli("train", "--config", "qwen-7b_soup")
    assert done.returncode != 0 and "neither a file nor a packaged training config" in done.stderr


@pytest.mark.slow
def test_train_runs_in_process_on_local_data(tmp_path):
    from trl_soup.toy import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, seed=0).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"problem": f"What is {i}+2?", "answer": str(i + 2)}) + "\n" for i in range(8))
    )
    done = run_cli(
        "train", "--model_name_or_path", tmp_path / "model", "--dataset_name", tmp_path / "data.jsonl",
        "--output_dir", tmp_path / "out", "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--num_generations", "4", "--max_completion_length", "8", "--behavior_refresh_interval", "2",
        "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "[soup_math] trainer=soup" in done.stdout
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    logs = [h for h in history if "reward" in h]
    assert [h["soup/relay_batch"] for h in logs] == [0.0, 1.0]


def test_end_distributed_process_exits_with_the_code_after_atexit_and_a_flush(tmp_path):
    """The exit of every process of a multi-process `train` run (and of the multi-process test scripts): `os._exit`
    with the given status, after the atexit handlers ran and buffered output was flushed; nothing after it runs.
    Without a process group it skips the barrier (2-process runs: test_recipes_math's DDP and ZeRO-3 tests)."""
    marker = tmp_path / "marker.txt"
    script = (
        "import atexit, sys\n"
        "from pathlib import Path\n"
        "from trl_soup.cli.train import end_distributed_process\n"
        "marker = Path(sys.argv[1])\n"
        "atexit.register(marker.write_text, 'atexit ran')\n"
        "sys.stdout.write('buffered, no newline')\n"
        "end_distributed_process(3)\n"
        "marker.write_text('returned')\n"
    )
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # stdout is a pipe: block-buffered
    done = subprocess.run(
        [sys.executable, "-c", script, str(marker)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert done.returncode == 3, done.stderr[-4000:]
    assert done.stdout == "buffered, no newline"
    assert marker.read_text() == "atexit ran"


# -------------------------------------------------------------------------------------------------------------- toy
@pytest.mark.slow
def test_toy_prints_the_summary_line(tmp_path):
    done = run_cli(
        "toy",
        "--max_steps",
        "4",
        "--behavior_refresh_interval",
        "2",
        "--num_prompts",
        "32",
        "--output_dir",
        tmp_path / "out",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert SUMMARY.search(done.stdout), done.stdout[-2000:]
    assert "4 steps in" in done.stdout and "2 relay batches" in done.stdout


# --------------------------------------------------------------------------------------------------- plot-positions
def _state(path, history):
    path.write_text(json.dumps({"log_history": history}))
    return path


def test_plot_refuses_logs_without_position_statistics(tmp_path):
    plain = _state(tmp_path / "plain.json", [{"step": 1, "reward": 0.5}, {"step": 1, "train_runtime": 1.0}])
    done = run_cli("plot-positions", plain, "--output", tmp_path / "fig.png")
    assert done.returncode == 2
    assert "no position statistics" in done.stderr and "--log_position_statistics true" in done.stderr
    assert not (tmp_path / "fig.png").exists()


def test_plot_refuses_other_files_and_empty_step_ranges(tmp_path, capsys):
    from trl_soup.cli.plot_positions import cli_main

    bins = {f"soup/position/{m}/bin_{i}": 0.1 for m in ("entropy", "clip_ratio") for i in range(10)}
    logged = _state(tmp_path / "logged.json", [{"step": 1, **bins}])
    not_a_state = tmp_path / "config.json"
    not_a_state.write_text(json.dumps({"model_type": "qwen2"}))
    cases = [
        ([str(not_a_state)], "no 'log_history' list"),
        ([str(tmp_path / "missing.json")], "cannot read it"),
        ([str(logged), "--steps", "5:"], "no position statistics .* in steps 5:"),
        ([str(logged), "--steps", "5"], "expected A:B"),
        ([str(logged), "--labels", "a", "b"], "2 labels for 1"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli_main([*argv, "--output", str(tmp_path / "fig.png")], prog="trl-soup plot-positions")
        assert exit_info.value.code == 2
        assert re.search(message, capsys.readouterr().err), argv
    assert cli_main([str(logged), "--output", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def test_import_and_top_level_help_load_no_torch():
    """`import trl_soup` and `trl-soup --help` do not import torch or TRL (the public names load on first use)."""
    code = (
        "import sys, trl_soup, trl_soup.cli.main as m\n"
        "assert not {'torch', 'trl', 'transformers'} & set(sys.modules), sorted({'torch', 'trl'} & set(sys.modules))\n"
        "print(trl_soup.SOUPConfig.__module__, trl_soup.SOUPTrainer.__module__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["trl_soup.config", "trl_soup.trainer", "True"]


# ---------------------------------------------------------------------------------------- refusals on the command line
def _refusal(capsys, *argv) -> str:
    """Runs `trl-soup ARGV` in this process; a refusal is exit status 2 and one line on stderr, no traceback."""
    from trl_soup.cli.main import main

    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_soup_options_with_the_grpo_trainer_are_named_as_soup_options(tmp_path, capsys):
    err = _refusal(capsys, "train", "--trainer", "grpo", "--prefix_ratio", "0.3", "--output_dir", tmp_path)
    assert err.startswith("trl-soup train: error: --prefix_ratio: SOUP options, and --trainer grpo trains TRL's own")
    config = tmp_path / "grpo.yaml"
    config.write_text("trainer: grpo\nbehavior_refresh_interval: 4\n")
    err = _refusal(capsys, "train", "--config", config, "--output_dir", tmp_path)
    assert "--behavior_refresh_interval: SOUP options" in err


def test_config_refusal_is_one_line_naming_the_option(tmp_path, capsys):
    err = _refusal(
        capsys, "train", "--behavior_pool_size", "0", "--output_dir", tmp_path, "--model_name_or_path", "m",
        "--dataset_name", "d",
    )  # fmt: skip
    assert "behavior_pool_size=0 is invalid: it must be an integer in [1, 32]" in err


def test_dataset_prefix_source_in_the_recipe_needs_the_reference_column(tmp_path, capsys):
    """It used to tell the user to set --prefix_dataset_column, which the recipe cannot use (it drops the column)."""
    err = _refusal(
        capsys, "train", "--prefix_source", "dataset", "--output_dir", tmp_path, "--model_name_or_path", "m",
        "--dataset_name", "d",
    )  # fmt: skip
    assert "--reference_column COLUMN" in err and "prefix_dataset_column" not in err


def test_missing_extras_are_named_before_anything_loads(tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else find_spec(name)
    )
    err = _refusal(capsys, "train", "--output_dir", tmp_path, "--model_name_or_path", "m", "--dataset_name", "d")
    assert 'math_verify is not installed, and trl-soup train needs it: pip install "trl-soup[math]"' in err
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name)
    )
    err = _refusal(capsys, "plot-positions", tmp_path / "trainer_state.json")
    assert 'matplotlib is not installed, and trl-soup plot-positions needs it: pip install "trl-soup[plot]"' in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU defaults apply without CUDA")
def test_train_defaults_to_the_cpu_in_float32_without_cuda(tmp_path):
    from trl_soup.cli.train import make_parser

    for trainer in ("soup", "grpo"):
        _, args, _ = make_parser(trainer).parse_args_and_config(["--output_dir", str(tmp_path)])
        assert args.use_cpu and not args.bf16
