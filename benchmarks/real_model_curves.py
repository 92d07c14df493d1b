"""Reward curves of SOUP and DAPO on the real model (issue 22): the packaged configs `smollm2-135m_arith_soup` and
`smollm2-135m_arith_dapo`, trained one after the other with `trl-soup train`, then plotted side by side.

Each run is resumable: checkpoints every `--save_steps` steps, and a second call continues each unfinished run from
its last checkpoint (`--resume_from_checkpoint true`) and skips finished ones, so a killed job loses at most
`--save_steps` steps. Per-step wall time is TRL's logged `step_time` (generation, rewards, forward, backward,
optimizer; not checkpoint saving).

    python benchmarks/real_model_curves.py                          # both runs (about 35 minutes on 2 quiet cores)
    python benchmarks/real_model_curves.py --replot                 # plot and table from the finished runs
    python benchmarks/real_model_curves.py --max_steps 2 --root /tmp/curves --save_steps 1   # plumbing check

Output: `--root`/<config>/ (the run: trainer_state.json, train.log, the model), `--plot` (a PNG: reward per step with
a 5-step moving average, and the mean completion length per step) and a markdown table on stdout (reward over the
first and last 10 steps, step time).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys

CONFIGS = ("smollm2-135m_arith_soup", "smollm2-135m_arith_dapo")


def finished(run_dir: str, max_steps: int) -> bool:
    """True when the run saved its final trainer_state.json at `max_steps` (what `trl-soup train` writes last)."""
    path = os.path.join(run_dir, "trainer_state.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("global_step", 0) >= max_steps


def train(config: str, run_dir: str, max_steps: int, save_steps: int, extra: list[str]) -> None:
    """One `trl-soup train` run, resumed from its last checkpoint if it has one; output in run_dir/train.log."""
    os.makedirs(run_dir, exist_ok=True)
    command = [sys.executable, "-m", "trl_soup.cli", "train", "--config", config, "--output_dir", run_dir]
    command += ["--max_steps", str(max_steps), "--save_steps", str(save_steps), "--save_total_limit", "1", *extra]
    if glob.glob(os.path.join(run_dir, "checkpoint-*")):
        command += ["--resume_from_checkpoint", "true"]
    print("[curves] " + " ".join(command), flush=True)
    with open(os.path.join(run_dir, "train.log"), "a") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)


def history(run_dir: str) -> list[dict]:
    """The training log entries (one per logged step) of a finished run."""
    with open(os.path.join(run_dir, "trainer_state.json")) as f:
        return [entry for entry in json.load(f)["log_history"] if "reward" in entry]


def moving_average(values: list[float], width: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - width + 1) : i + 1]) for i in range(len(values))]


def summarise(runs: dict[str, list[dict]]) -> str:
    """A markdown table: mean reward over the first and last 10 steps, median and spread of the step time."""
    rows = [
        "| config | steps | reward, steps 1-10 | reward, last 10 | median s/step | s/step range | total train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entries in runs.items():
        rewards = [e["reward"] for e in entries]
        seconds = [e["step_time"] for e in entries if "step_time" in e]
        timing = (
            f"{statistics.median(seconds):.1f} | {min(seconds):.1f}-{max(seconds):.1f} | {sum(seconds):.0f}"
            if seconds
            else "- | - | -"
        )
        first, last = statistics.fmean(rewards[:10]), statistics.fmean(rewards[-10:])
        rows.append(f"| {name} | {len(entries)} | {first:.3f} | {last:.3f} | {timing} |")
    return "\n".join(rows)


def plot(runs: dict[str, list[dict]], path: str) -> None:
    """Reward per step (5-step mean over the raw values) and the mean completion length per step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, lengths) = plt.subplots(1, 2, figsize=(11, 4))
    for name, entries in runs.items():
        label = name.rsplit("_", 1)[-1].upper()
        steps = [e["step"] for e in entries]
        rewards = [e["reward"] for e in entries]
        (line,) = by_step.plot(steps, moving_average(rewards, 5), label=f"{label} (5-step mean)")
        by_step.plot(steps, rewards, color=line.get_color(), alpha=0.25, linewidth=1)
        lengths.plot(steps, [e["completions/mean_length"] for e in entries], color=line.get_color(), label=label)
    by_step.set(xlabel="optimizer step", ylabel="mean reward (math-verify)", title="SmolLM2-135M, arithmetic: reward")
    lengths.set(xlabel="optimizer step", ylabel="tokens (budget 64)", title="mean completion length")
    by_step.legend()
    lengths.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"[curves] wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="outputs/real_model_curves", help="one directory per run under it")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="packaged config names, comma-separated")
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--save_steps", type=int, default=5)
    parser.add_argument("--plot", default="docs/figures/real_model_curves.png")
    parser.add_argument("--replot", action="store_true", help="no training: plot and tabulate the finished runs")
    args, extra = parser.parse_known_args(argv)  # anything else goes to `trl-soup train`
    configs = [name for name in args.configs.split(",") if name]
    for name in configs:
        run_dir = os.path.join(args.root, name)
        if not args.replot and not finished(run_dir, args.max_steps):
            train(name, run_dir, args.max_steps, args.save_steps, extra)
    runs = {name: history(os.path.join(args.root, name)) for name in configs}
    print(summarise(runs), flush=True)
    plot(runs, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
