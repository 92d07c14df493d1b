"""Real-model study (issue 26): does SOUP beat DAPO on SmolLM2-135M-Instruct, on the arithmetic task, per step and
per unit of compute? A sibling of `recipes/explore_study.py`, sharing its statistics (`recipes/study_stats.py`).

Every run starts from the same pretrained model (`trl-soup models fetch smollm2-135m-instruct`, no Hub) and trains
`max_steps` optimizer steps with `trl-soup train --config smollm2-135m_arith_soup` and the overrides of its setting
(`SETTINGS`): on-policy DAPO (`behavior_refresh_interval=1`: every batch on-policy, SOUP's loss is then DAPO's) at two
learning rates, and SOUP at the paper's settings (ratio 0.5 / T 8, ratio 0.3 / T 4, entropy truncation with top-k
scaled to the response length) and the fixed-budget prefix (Appendix C). Seeds change the training data order and
the sampling; the evaluation (problems, sampling seeds) is the same for every run.

After training, each final policy samples `eval_samples` answers for each of the first `eval_problems` problems of
the held-out test split (temperature 1, `max_completion_length` tokens, graded by math-verify), and:

- pass@k for k = 1..eval_samples (unbiased estimator), a (seed x problem) table per setting, 95% bootstrap intervals
  over seeds and problems; paired differences against DAPO and against the start model;
- relay inference (paper Fig. 4): the start model's answers (an earlier checkpoint of every run) are cut at
  `relay_ratio` and the final policy continues them; pass@k of the relay minus the final policy alone;
- from the training logs: reward and response length per step, entropy and clip ratio by 10% position bin
  (Fig. 5, `log_position_statistics=True`), the tokens decoded per step (the behavior copy's full response and the
  continuation on relay steps, the response on on-policy steps) and the time per step (TRL's `step_time`) and the
  CPU time of the training process: the compute-matched axes.

Budget (2 CPU cores): two runs at a time, each pinned to one core with one thread; evaluation with vLLM's CPU engine
when it is installed (about 2x transformers' throughput here), else transformers. Every stage writes its result
file last and is skipped when the file is there; training checkpoints every `save_steps`: a killed study continues
where it stopped with `--resume` (at most `save_steps` steps of a run are lost).

    python recipes/real_model_study.py --output_dir outputs/real_model_study             # the study
    python recipes/real_model_study.py --output_dir outputs/real_model_study --resume    # continue it
    python recipes/real_model_study.py --tables outputs/real_model_study/results.json    # docs/results.md tables
    python recipes/real_model_study.py --smoke --output_dir /tmp/real_smoke              # what CI runs (<1 min)
    python recipes/real_model_study.py --output_dir outputs/real_model_study --repeat dapo 0   # reproducibility

Writes `study_config.json` (first), `start/eval.json`, `runs/<setting>_seed<seed>/` (the `trl-soup train` output,
`cost.json`, `eval.json`), and at the end `results.json` and `real_*.png` figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the study modules beside this script
from study_stats import bootstrap_ci, cell, compare, difference, mean_curve, pass_table  # noqa: E402

SCRIPT = os.path.abspath(__file__)
CONFIG_NAME = "smollm2-135m_arith_soup"  # the packaged SOUP config; a setting overrides its SOUP fields
MODEL = "smollm2-135m-instruct"
# name -> `trl-soup train` overrides. "dapo" is the baseline every comparison is paired with.
SETTINGS: dict[str, dict] = {
    "dapo": dict(behavior_refresh_interval=1),
    # the sharpening control: is SOUP more than slower on-policy training? (a 3x smaller step)
    "dapo_lr7e-6": dict(behavior_refresh_interval=1, learning_rate=7e-6),
    "soup_r0.5_T8": dict(prefix_ratio=0.5, behavior_refresh_interval=8),  # paper, Qwen2.5-Math-7B
    "soup_r0.3_T4": dict(prefix_ratio=0.3, behavior_refresh_interval=4),  # paper, R1-Distill-Qwen-1.5B
    # paper: top 32 of 4k-8k token responses (under 1% of positions); 64-token responses: the top 2 (3%)
    "soup_entropy_k2_T8": dict(prefix_strategy="entropy", prefix_entropy_top_k=2, behavior_refresh_interval=8),
    # Appendix C: the behavior copy decodes only the kept prefix, half the response budget
    "soup_fixed32_T8": dict(prefix_strategy="fixed_budget", prefix_budget=32, behavior_refresh_interval=8),
}
DEFAULTS = dict(
    settings=list(SETTINGS),
    seeds=[0, 1, 2],
    max_steps=24,
    learning_rate=2e-5,
    num_generations=8,
    prompts_per_step=1,
    max_completion_length=64,
    save_steps=4,
    eval_problems=12,
    eval_samples=64,
    relay_ratio=0.5,
    num_resamples=2000,
    workers=2,
    backend="auto",
)
SMOKE = dict(
    settings=["dapo", "soup_r0.5_T8"],
    seeds=[0],
    max_steps=2,
    num_generations=2,
    max_completion_length=8,
    save_steps=1,
    eval_problems=2,
    eval_samples=4,
    num_resamples=200,
    workers=2,
    backend="transformers",
)
EVAL_SEED = 10_000  # sampling seed of the evaluation: the same for every run
SAME_STUDY_KEYS = ("max_steps", "learning_rate", "num_generations", "prompts_per_step", "max_completion_length")
SAME_STUDY_KEYS += ("eval_problems", "eval_samples", "relay_ratio", "backend")


# ---------------------------------------------------------------------------------------------------------------------
# One run: training (a `trl-soup train` process), then its evaluation (a process of this script)
# ---------------------------------------------------------------------------------------------------------------------


def run_dir(config: dict, setting: str, seed: int) -> str:
    return os.path.join(config["output_dir"], "runs", f"{setting}_seed{seed}")


def train_command(config: dict, setting: str, seed: int) -> list[str]:
    """The `trl-soup train` command line of one run (with `--resume_from_checkpoint true` once it has a checkpoint)."""
    out = run_dir(config, setting, seed)
    overrides = {
        "learning_rate": config["learning_rate"],
        "max_steps": config["max_steps"],
        "num_generations": config["num_generations"],
        "per_device_train_batch_size": config["num_generations"] * config["prompts_per_step"],
        "max_completion_length": config["max_completion_length"],
        "save_steps": config["save_steps"],
        "save_total_limit": 1,
        "seed": seed,
        "data_seed": seed,
        "log_position_statistics": "true",
        "disable_tqdm": "true",
        **SETTINGS[setting],
    }
    command = [sys.executable, "-m", "trl_soup.cli", "train", "--config", CONFIG_NAME, "--output_dir", out]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    if any(name.startswith("checkpoint-") for name in (os.listdir(out) if os.path.isdir(out) else [])):
        command += ["--resume_from_checkpoint", "true"]
    return command


def trained(directory: str, max_steps: int) -> bool:
    """True when `trl-soup train` finished the run: its final trainer_state.json is at `max_steps` (written last)."""
    path = os.path.join(directory, "trainer_state.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("global_step", 0) >= max_steps


def pinned(command: list[str], core: int | None, threads: int = 1) -> tuple[list[str], dict]:
    """`command` pinned to one core with `threads` torch/OMP threads (and vLLM's CPU engine bound to that core)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    if core is None:
        return command, env
    env["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
    return (["taskset", "-c", str(core), *command] if shutil.which("taskset") else command), env


RUNNING: set[subprocess.Popen] = set()  # the lanes' child processes, stopped together on SIGTERM / Ctrl-C
STOPPING = threading.Event()


def run_logged(command: list[str], core: int | None, log_path: str) -> dict:
    """Run `command` (appending its output to `log_path`); its wall seconds and its own CPU seconds (`os.wait4`: the
    rusage of this child and the descendants it waited for, not of the other lane's processes). A vLLM engine process
    that its parent does not wait for is not counted (evaluation CPU is therefore a lower bound)."""
    command, env = pinned(command, core)
    began = time.perf_counter()
    with open(log_path, "a") as log:
        log.write("[study] " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        RUNNING.add(process)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            RUNNING.discard(process)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = {"wall": time.perf_counter() - began, "cpu": usage.ru_utime + usage.ru_stime}
    if process.returncode != 0:
        raise StageFailed(f"{command[:6]}... failed with exit code {process.returncode}; see {log_path}", seconds)
    return seconds


class StageFailed(RuntimeError):
    """A stage's process failed or was stopped; `seconds` is what it used (recorded in cost.json all the same)."""

    def __init__(self, message: str, seconds: dict):
        super().__init__(message)
        self.seconds = seconds


def run_stage(directory: str, stage: str, command: list[str], core: int | None) -> None:
    """One stage of a job (train or eval), its cost added to `cost.json` even when it fails or is stopped."""
    try:
        seconds = run_logged(command, core, os.path.join(directory, f"{stage}.log"))
    except StageFailed as failure:
        add_cost(directory, stage, failure.seconds)
        raise
    add_cost(directory, stage, seconds)


def stop_children(signum, frame) -> None:
    """SIGTERM / Ctrl-C: stop every running stage; the lanes record their costs and start nothing new, then the study
    exits (`run_lanes`); `--resume` continues it."""
    STOPPING.set()
    for process in list(RUNNING):
        process.terminate()


def add_cost(directory: str, stage: str, seconds: dict) -> None:
    """Accumulate a stage's seconds over the invocations of a resumed run in `cost.json`."""
    path = os.path.join(directory, "cost.json")
    cost = {}
    if os.path.isfile(path):
        with open(path) as f:
            cost = json.load(f)
    totals = cost.setdefault(stage, {"wall": 0.0, "cpu": 0.0, "invocations": 0})
    totals["wall"] += seconds["wall"]
    totals["cpu"] += seconds["cpu"]
    totals["invocations"] += 1
    with open(path, "w") as f:
        json.dump(cost, f, indent=1)


def run_job(config: dict, setting: str | None, seed: int | None, core: int | None) -> None:
    """One job of a lane: the start model's evaluation (`setting` None), or one run's training and evaluation."""
    if setting is None:
        directory = os.path.join(config["output_dir"], "start")
        os.makedirs(directory, exist_ok=True)
        if not os.path.isfile(os.path.join(directory, "eval.json")):
            command = [sys.executable, SCRIPT, "--evaluate", directory, "--study", config["output_dir"]]
            run_stage(directory, "eval", command, core)
        return
    directory = run_dir(config, setting, seed)
    os.makedirs(directory, exist_ok=True)
    if not trained(directory, config["max_steps"]):
        run_stage(directory, "train", train_command(config, setting, seed), core)
    for name in os.listdir(directory):  # a finished run needs its final model only: 1.6 GB less per run
        if name.startswith("checkpoint-"):
            shutil.rmtree(os.path.join(directory, name))
    if not os.path.isfile(os.path.join(directory, "eval.json")):
        command = [sys.executable, SCRIPT, "--evaluate", directory, "--study", config["output_dir"]]
        run_stage(directory, "eval", command, core)
    print(f"[study] {setting} seed {seed}: done", flush=True)


def run_lanes(config: dict) -> None:
    """Every job, in `workers` lanes (threads, each running its jobs' processes one by one on a core of its own).
    The start model's evaluation comes first: every run's relay evaluation reads it (and waits for it)."""
    jobs = [(None, None)] + [(s, seed) for seed in config["seeds"] for s in config["settings"]]
    lanes = [jobs[i :: config["workers"]] for i in range(config["workers"])]
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    cores = sorted(cores) if len(cores) >= config["workers"] else [None] * config["workers"]
    errors: list[BaseException] = []

    def lane(index: int) -> None:
        try:
            for setting, seed in lanes[index]:
                if STOPPING.is_set():
                    return
                run_job(config, setting, seed, cores[index])
        except BaseException as error:  # noqa: BLE001 (re-raised by the main thread)
            errors.append(error)

    threads = [threading.Thread(target=lane, args=(i,), daemon=True) for i in range(config["workers"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():  # join with a timeout: the main thread stays responsive to signals
            thread.join(timeout=1.0)
    if STOPPING.is_set():
        raise SystemExit("[study] stopped; continue with --resume (the stopped stages' costs are in cost.json)")
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation of one policy (runs in its own process: `--evaluate DIR`)
# ---------------------------------------------------------------------------------------------------------------------


def problems(config: dict) -> list[dict]:
    from trl_soup.arithmetic import arithmetic_rows

    return arithmetic_rows("test", size=config["eval_problems"])


def prompt_ids(tokenizer, rows: list[dict]) -> list[list[int]]:
    """The training prompt of each problem: the bare question as a chat message (trl_soup.cli.train)."""
    ids = []
    for row in rows:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["problem"]}], add_generation_prompt=True, tokenize=True
        )
        ids.append(list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded))
    return ids


def build_generator(config: dict, model_path: str, tokenizer):
    import torch

    from trl_soup.evaluation import TransformersGenerator, VLLMGenerator

    if config["backend"] == "vllm":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        return VLLMGenerator(model_path, dtype="float32", max_model_len=512)
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return TransformersGenerator(
        model, pad_token_id=tokenizer.pad_token_id, eos_token_ids=[tokenizer.eos_token_id], batch_size=256
    )


def grade(tokenizer, rows: list[dict], responses: list[list[int]], n: int) -> list[int]:
    """Correct answers of each problem among its `n` responses (math-verify, as the training reward)."""
    from trl_soup.rewards import math_is_correct

    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return [
        sum(bool(math_is_correct(texts[i * n + j], row["answer"])) for j in range(n)) for i, row in enumerate(rows)
    ]


def evaluate(directory: str, config: dict) -> dict:
    """Sample and grade the policy saved in `directory` (the start model for `<study>/start`); for a trained run
    also relay inference from the start model's answers. Writes `directory/eval.json` last."""
    from transformers import AutoTokenizer

    from trl_soup.evaluation import relay_generate
    from trl_soup.models import fetch_model

    start = os.path.basename(os.path.normpath(directory)) == "start"
    model_path = str(fetch_model(MODEL)) if start else directory
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows, n, budget = problems(config), config["eval_samples"], config["max_completion_length"]
    ids = prompt_ids(tokenizer, rows)
    generator = build_generator(config, model_path, tokenizer)
    responses = generator.generate(ids, budget, n=n, seed=EVAL_SEED)
    result = {"correct": grade(tokenizer, rows, responses, n), "lengths": [len(r) for r in responses]}
    if start:
        result["responses"] = responses
    else:
        start_eval = wait_for(os.path.join(config["output_dir"], "start", "eval.json"))
        eos = [tokenizer.eos_token_id]
        relay, _ = relay_generate(
            None,
            generator,
            ids,
            budget,
            n,
            config["relay_ratio"],
            eos,
            EVAL_SEED,
            prefix_responses=start_eval["responses"],
        )
        result["relay_start_correct"] = grade(tokenizer, rows, relay, n)
    write_json(os.path.join(directory, "eval.json"), result)
    return result


def wait_for(path: str, timeout: float = 7200.0) -> dict:
    """The JSON at `path` once another lane has written it."""
    began = time.monotonic()
    while not os.path.isfile(path):
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{path} was not written within {timeout:.0f} s")
        time.sleep(5)
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value) -> None:
    """Write atomically (a killed study never leaves a half-written result that a resume would trust)."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------------------------------------------------
# Reading the runs: training curves, costs, and the summary
# ---------------------------------------------------------------------------------------------------------------------


def decoded_tokens(entry: dict, batch: int) -> float:
    """Tokens decoded on one training step: on a relay step the behavior copy's responses (their full length; the
    fixed-budget strategy decodes only its budget) plus the continuations; on an on-policy step the responses."""
    length = entry["completions/mean_length"]
    if entry.get("soup/relay_batch", 0.0) > 0 and "soup/behavior_length/mean" in entry:
        return batch * (entry["soup/behavior_length/mean"] + length - entry["soup/prefix_length/mean"])
    return batch * length


def training_record(directory: str, batch: int) -> dict:
    """The per-step curves and the costs of one finished run."""
    from trl_soup.cli.plot_positions import position_curves

    with open(os.path.join(directory, "trainer_state.json")) as f:
        logs = [h for h in json.load(f)["log_history"] if "reward" in h]
    with open(os.path.join(directory, "cost.json")) as f:
        cost = json.load(f)
    return {
        "reward": [h["reward"] for h in logs],
        "completion_length": [h["completions/mean_length"] for h in logs],
        "clipped_ratio": [h.get("completions/clipped_ratio") for h in logs],
        "relay_batch": [h.get("soup/relay_batch", 0.0) for h in logs],
        "prefix_fraction": [h.get("soup/prefix_fraction", 0.0) for h in logs],
        "entropy": [h.get("entropy") for h in logs],
        "step_time": [h.get("step_time") for h in logs],
        "decoded_tokens": [decoded_tokens(h, batch) for h in logs],
        "position": position_curves(logs),
        "train_seconds": sum(h.get("step_time", 0.0) for h in logs),
        "train_cpu_seconds": None if cost["train"].get("unmeasured") else cost["train"]["cpu"],
        "train_invocations": cost["train"]["invocations"],
    }


def collect(config: dict) -> tuple[dict, list[dict]]:
    """The start model's evaluation and every run's record (training curves, costs, evaluation)."""
    with open(os.path.join(config["output_dir"], "start", "eval.json")) as f:
        start = json.load(f)
    start.pop("responses")
    batch = config["num_generations"] * config["prompts_per_step"]
    runs = []
    for seed in config["seeds"]:
        for setting in config["settings"]:
            directory = run_dir(config, setting, seed)
            with open(os.path.join(directory, "eval.json")) as f:
                evaluation = json.load(f)
            runs.append({"setting": setting, "seed": seed, **training_record(directory, batch), **evaluation})
    return start, runs


def mean_known(values: list) -> float | None:
    """The mean of the values that are not None (None if none is known)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def summarize(config: dict, start: dict, runs: list[dict]) -> dict:
    """pass@k per setting (and start), paired differences against dapo and start, relay minus final, costs."""
    n, seeds = config["eval_samples"], config["seeds"]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    ci = lambda table: bootstrap_ci(table, num_resamples=config["num_resamples"], seed=0)  # noqa: E731
    table = {"start": [start["correct"]] * len(seeds)}  # one start model, paired with every seed's run
    for name in config["settings"]:
        table[name] = [
            r["correct"] for r in sorted((r for r in runs if r["setting"] == name), key=lambda r: r["seed"])
        ]
    summary = {"ks": ks, "pass_at_k": {}, "vs_dapo": {}, "vs_start": {}, "relay_minus_final": {}, "cost": {}}
    for name, correct in table.items():
        summary["pass_at_k"][name] = {str(k): ci(pass_table(correct, n, k)) for k in range(1, n + 1)}
        for other, key in (("dapo", "vs_dapo"), ("start", "vs_start")):
            if name not in (other, "start") and other in table:
                summary[key][name] = {
                    str(k): ci(difference(pass_table(correct, n, k), pass_table(table[other], n, k))) for k in ks
                }
    for name in config["settings"]:
        mine = sorted((r for r in runs if r["setting"] == name), key=lambda r: r["seed"])
        relay = [r["relay_start_correct"] for r in mine]
        summary["relay_minus_final"][name] = {
            str(k): ci(difference(pass_table(relay, n, k), pass_table(table[name], n, k))) for k in ks
        }
        summary["cost"][name] = {
            "train_seconds": sum(r["train_seconds"] for r in mine) / len(mine),
            "train_cpu_seconds": mean_known([r["train_cpu_seconds"] for r in mine]),
            "decoded_tokens": sum(sum(r["decoded_tokens"]) for r in mine) / len(mine),
        }
    return summary


# ---------------------------------------------------------------------------------------------------------------------
# Tables and figures
# ---------------------------------------------------------------------------------------------------------------------


def markdown_tables(results: dict) -> str:
    """The tables of docs/results.md's real-model section, from a results.json."""
    summary, config = results["summary"], results["config"]
    names, ks, n = config["settings"], summary["ks"], config["eval_samples"]
    lines = [f"pass@k on {config['eval_problems']} held-out problems x {n} samples (95% CI over seeds and problems):"]
    lines += ["", "| policy | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for name in ["start", *names]:
        lines.append(f"| {name} | " + " | ".join(cell(summary["pass_at_k"][name][str(k)]) for k in ks) + " |")
    for key, title in (
        ("vs_start", "Minus the start model (paired by problem)"),
        ("vs_dapo", "Minus dapo (paired by seed and problem)"),
        ("relay_minus_final", f"Relay (the start model writes the first {config['relay_ratio']:.0%}) minus final"),
    ):
        lines += ["", f"{title}, 95% CI:", "", "| setting | " + " | ".join(f"pass@{k}" for k in ks) + " |"]
        lines.append("|---" * (len(ks) + 1) + "|")
        for name, by_k in summary[key].items():
            lines.append(f"| {name} | " + " | ".join(cell(by_k[str(k)]) for k in ks) + " |")
    lines += ["", "Per unit of training (mean over seeds; gain = setting minus start, paired):", ""]
    lines += [
        "| setting | steps | train s | train CPU s | decoded tokens | pass@1 gain per 1000 s "
        f"| pass@1 gain per 100k tok | pass@{ks[-1]} gain per 1000 s |",
        "|---" * 8 + "|",
    ]
    for name in names:
        cost, gain1, gaink = (
            summary["cost"][name],
            summary["vs_start"][name]["1"],
            summary["vs_start"][name][str(ks[-1])],
        )
        per = lambda x, unit: {key: x[key] / unit for key in ("mean", "low", "high")}  # noqa: E731
        cpu = "-" if cost["train_cpu_seconds"] is None else f"{cost['train_cpu_seconds']:.0f}"
        lines.append(
            f"| {name} | {config['max_steps']} | {cost['train_seconds']:.0f} | {cpu} | "
            f"{cost['decoded_tokens']:.0f} | {cell(per(gain1, cost['train_seconds'] / 1000))} | "
            f"{cell(per(gain1, cost['decoded_tokens'] / 1e5))} | {cell(per(gaink, cost['train_seconds'] / 1000))} |"
        )
    return "\n".join(lines + ["", training_table(results)])


def training_table(results: dict) -> str:
    """Training curves in numbers: reward and length over the first and last quarter, prefix share, clipping."""
    names, runs = results["config"]["settings"], results["runs"]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    lines = [
        "| setting | reward, first 25% of steps | last 25% | length first -> last 25% | cut at budget, last 25% "
        "| prefix share, relay steps | s/step |",
        "|---" * 7 + "|",
    ]
    for name in names:
        mine = [r for r in runs if r["setting"] == name]
        quarter = max(1, len(mine[0]["reward"]) // 4)
        first = mean([mean(r["reward"][:quarter]) for r in mine])
        last = mean([mean(r["reward"][-quarter:]) for r in mine])
        length = (
            mean([mean(r["completion_length"][:quarter]) for r in mine]),
            mean([mean(r["completion_length"][-quarter:]) for r in mine]),
        )
        cut = mean([mean([c for c in r["clipped_ratio"][-quarter:] if c is not None]) for r in mine])
        prefix = mean([p for r in mine for p, b in zip(r["prefix_fraction"], r["relay_batch"], strict=True) if b > 0])
        seconds = mean([r["train_seconds"] / len(r["reward"]) for r in mine])
        lines.append(
            f"| {name} | {first:.3f} | {last:.3f} | {length[0]:.0f} -> {length[1]:.0f} | {cut:.2f} | "
            f"{prefix:.2f} | {seconds:.1f} |"
        )
    return "\n".join(lines)


def plot(results: dict, figures_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, names = results["summary"], results["config"]["settings"]
    by_setting = {name: [r for r in results["runs"] if r["setting"] == name] for name in names}
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name in names:
        runs = by_setting[name]
        reward = mean_curve([r["reward"] for r in runs])
        seconds = mean_curve([[sum(r["step_time"][: i + 1]) for i in range(len(r["step_time"]))] for r in runs])
        axes[0].plot(range(1, len(reward) + 1), reward, label=name)
        axes[1].plot(seconds, reward, label=name)
        axes[2].plot(range(1, len(reward) + 1), mean_curve([r["completion_length"] for r in runs]), label=name)
    for axis, xlabel, title in zip(
        axes,
        ("optimizer step", "training seconds (TRL step_time, cumulative)", "optimizer step"),
        ("training reward (mean over seeds)", "training reward against time", "mean response length (tokens)"),
        strict=True,
    ):
        axis.set(xlabel=xlabel, title=title)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(figures_dir, "real_training.png"), dpi=110)
    plot_pass_at_k(summary, names, figures_dir)


def plot_pass_at_k(summary: dict, names: list[str], figures_dir: str) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name in ["start", *names]:
        curve = summary["pass_at_k"][name]
        ks = sorted(int(k) for k in curve)
        axes[0].plot(ks, [curve[str(k)]["mean"] for k in ks], label=name)
    axes[0].set(xscale="log", xlabel="k", ylabel="pass@k", title="pass@k, held-out problems")
    for axis, key, title in ((axes[1], "vs_dapo", "minus dapo (paired)"), (axes[2], "vs_start", "minus start")):
        for name, by_k in summary[key].items():
            ks = sorted(int(k) for k in by_k)
            axis.plot(ks, [by_k[str(k)]["mean"] for k in ks], marker="o", label=name)
            axis.fill_between(ks, [by_k[str(k)]["low"] for k in ks], [by_k[str(k)]["high"] for k in ks], alpha=0.1)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set(xscale="log", xlabel="k", title=f"pass@k {title}, 95% CI")
    for axis in axes:
        axis.set_xscale("log", base=2)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(figures_dir, "real_pass_at_k.png"), dpi=110)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def study_config(args: argparse.Namespace) -> dict:
    config = {key: getattr(args, key) for key in DEFAULTS}
    if args.smoke:
        config.update(SMOKE)
    unknown = [name for name in config["settings"] if name not in SETTINGS]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}. Allowed values: {list(SETTINGS)}.")
    if config["backend"] == "auto":  # vLLM's CPU engine when installed (unlike `trl-soup evaluate`, which needs CUDA)
        import importlib.util

        config["backend"] = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    return dict(config, output_dir=os.path.abspath(args.output_dir))


def open_study(config: dict, resume: bool) -> None:
    """Create the study directory, or continue it with `--resume` if its recorded settings allow."""
    path = os.path.join(config["output_dir"], "study_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            recorded = json.load(f)
        if not resume:
            raise SystemExit(f"{config['output_dir']} holds a study already: pass --resume to continue it.")
        changed = [key for key in SAME_STUDY_KEYS if recorded.get(key) != config[key]]
        if changed:
            raise SystemExit(
                f"--resume: {', '.join(f'{k}={config[k]!r} (the study has {recorded.get(k)!r})' for k in changed)}; "
                "these must stay as the study started (settings and seeds may grow)."
            )
    os.makedirs(config["output_dir"], exist_ok=True)
    write_json(path, config)


def repeat(config: dict, setting: str, seed: int) -> dict:
    """Train and evaluate `setting` x `seed` again in `<study>/repeat/` and compare it with the study's run."""
    copy = dict(config, output_dir=os.path.join(config["output_dir"], "repeat"))
    os.makedirs(os.path.join(copy["output_dir"], "start"), exist_ok=True)
    shutil.copy(os.path.join(config["output_dir"], "start", "eval.json"), os.path.join(copy["output_dir"], "start"))
    write_json(os.path.join(copy["output_dir"], "study_config.json"), copy)
    run_job(copy, setting, seed, None)
    batch = config["num_generations"] * config["prompts_per_step"]
    records = []
    for study in (config, copy):
        directory = run_dir(study, setting, seed)
        with open(os.path.join(directory, "eval.json")) as f:
            record = {**training_record(directory, batch), **json.load(f)}
        records.append(
            {k: v for k, v in record.items() if k not in ("step_time", "train_seconds", "train_cpu_seconds")}
        )
    for i, record in enumerate(records):
        write_json(os.path.join(copy["output_dir"], f"compare_{i}.json"), record)
    return compare(*(os.path.join(copy["output_dir"], f"compare_{i}.json") for i in range(2)))


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key, value in DEFAULTS.items():
        kind = type(value[0]) if isinstance(value, list) else type(value)
        parser.add_argument(f"--{key}", type=kind, nargs="+" if isinstance(value, list) else None, default=value)
    parser.add_argument("--output_dir", default="outputs/real_model_study")
    parser.add_argument("--resume", action="store_true", help="continue the study in --output_dir")
    parser.add_argument("--smoke", action="store_true", help="a tiny study of 2 settings x 1 seed (what CI runs)")
    parser.add_argument("--figures_dir", default=None, help="where the PNGs go (default: output_dir)")
    parser.add_argument("--tables", default=None, metavar="RESULTS_JSON", help="print the markdown tables and exit")
    parser.add_argument("--repeat", nargs=2, default=None, metavar=("SETTING", "SEED"))
    parser.add_argument("--evaluate", default=None, help=argparse.SUPPRESS)  # internal: one policy's evaluation
    parser.add_argument("--study", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict | None:
    args = parse(argv)
    if args.evaluate:
        with open(os.path.join(args.study, "study_config.json")) as f:
            return evaluate(args.evaluate, json.load(f))
    if args.tables:
        with open(args.tables) as f:
            print(markdown_tables(json.load(f)))
        return None
    config = study_config(args)
    if args.repeat:
        with open(os.path.join(config["output_dir"], "study_config.json")) as f:
            result = repeat(json.load(f), args.repeat[0], int(args.repeat[1]))
        print(json.dumps(result))
        return result
    open_study(config, args.resume)
    signal.signal(signal.SIGTERM, stop_children)
    signal.signal(signal.SIGINT, stop_children)
    began = time.perf_counter()
    run_lanes(config)
    start, runs = collect(config)
    results = {"config": config, "start": start, "runs": runs, "summary": summarize(config, start, runs)}
    results["seconds"] = time.perf_counter() - began
    write_json(os.path.join(config["output_dir"], "results.json"), results)
    figures_dir = args.figures_dir or config["output_dir"]
    os.makedirs(figures_dir, exist_ok=True)
    plot(results, figures_dir)
    print(markdown_tables(results), flush=True)
    print(f"\nwrote {os.path.join(config['output_dir'], 'results.json')} in {results['seconds']:.0f} s", flush=True)
    return results


if __name__ == "__main__":
    main()
