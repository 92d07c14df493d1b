"""Exploration study: on-policy DAPO vs SOUP on graph walks (many correct answers per prompt), on 2 CPU cores.

Nothing is downloaded. The task is `recipes/explore_task.py`: "walk:c>f=" asks for a walk of exactly 20 steps from node
c to node f in a fixed 12-node graph; a prompt has about 10^8 correct answers of very unequal prior probability. The
start policy (a 0.5M-parameter Qwen2 from `toy.build_tiny_model`, SFT on walks of a skewed prior) finds correct walks
for most prompts but rarely. Every run of a seed starts from the same start policy and trains `max_steps` steps with
the same data; it trains on a shaped reward (partial credit for valid walks that end near the target) and every
evaluation measure uses the binary one (1 iff the walk is correct). Settings are the rows of `SETTINGS`: on-policy
DAPO (`SOUPTrainer` with T = 1) and SOUP at the paper's settings, the newer prefix strategies, the adaptive refresh,
a snapshot pool and the dataset prefix source.

After training each policy samples `eval_samples` answers for each of `eval_prompts` prompts (temperature 1), and:

- pass@k for k = 1..eval_samples/2.. (unbiased estimator, `trl_soup.evaluation.pass_at_k`), per (seed, prompt);
- distinct correct answers per prompt (`distinct_correct_count`), the solution-set measure;
- relay inference (paper Sec. 5.1 / Fig. 4): an earlier checkpoint (the start policy, and the run's own checkpoint
  at half the steps) samples full responses, they are cut at `relay_ratio`, the final policy continues
  (`trl_soup.evaluation.relay_generate`); pass@k of the relay minus pass@k of the final policy alone;
- entropy and clip ratio by 10% bin of relative token position (paper Fig. 5, `log_position_statistics=True`).

Every mean comes with a 95% bootstrap interval over seeds and prompts (`recipes/study_stats.py`: `bootstrap_ci`); a
difference between two settings is paired (same seed, same prompt) and bootstrapped as one table.

Launch (the full study: about 25 minutes on 2 quiet CPU cores with `--workers 2`; see docs/results.md):

    python recipes/explore_study.py --output_dir outputs/explore_study --figures_dir docs/figures --workers 2
    python recipes/explore_study.py --smoke --output_dir /tmp/explore_smoke    # a few seconds, what CI runs

Writes `results.json` (every number: per run the reward and clip curves, position curves, correct and distinct
counts per prompt; per setting pass@k, distinct and relay with intervals) and `explore_*.png` figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the study modules beside this script
import explore_task  # noqa: E402
from study_stats import (  # noqa: E402
    bootstrap_ci,
    cell,
    compare,
    difference,
    distinct_correct_count,
    mean_curve,
    pass_table,
)

from trl_soup import toy  # noqa: E402
from trl_soup.cli.plot_positions import BINS, position_curves  # noqa: E402
from trl_soup.evaluation import TransformersGenerator, pass_at_k, relay_generate  # noqa: E402

# name -> SOUPConfig overrides. "dapo" is the on-policy baseline (T = 1: no behavior copy, plain DAPO).
SETTINGS: dict[str, dict] = {
    "dapo": dict(behavior_refresh_interval=1),
    "soup_r0.5_T8": dict(prefix_ratio=0.5, behavior_refresh_interval=8),  # paper, Qwen2.5-Math-7B
    "soup_r0.3_T4": dict(prefix_ratio=0.3, behavior_refresh_interval=4),  # paper, R1-Distill-Qwen-1.5B
    # paper's entropy truncation; with 21-token answers the top 32 positions are all of them: a uniform cut
    "soup_entropy_k32_T16": dict(prefix_strategy="entropy", prefix_entropy_top_k=32, behavior_refresh_interval=16),
    "soup_entropy_k4_T16": dict(prefix_strategy="entropy", prefix_entropy_top_k=4, behavior_refresh_interval=16),
    # Appendix C: decode only the kept prefix (10 of the 21 tokens, about ratio 0.5)
    "soup_fixed10_T8": dict(prefix_strategy="fixed_budget", prefix_budget=10, behavior_refresh_interval=8),
    # docs/refresh.md: refresh at T = 16 at the latest, sooner once staleness > 0.02 nats per prefix token
    "soup_adaptive_r0.5_T16": dict(
        prefix_ratio=0.5, behavior_refresh_interval=16, behavior_refresh_policy="adaptive", behavior_max_staleness=0.02
    ),
    # control, not in the default list: on-policy DAPO with a 3x smaller step. Is SOUP's wider solution set more than
    # slower training? (`--settings dapo control_dapo_lr3e-4`)
    "control_dapo_lr3e-4": dict(behavior_refresh_interval=1, learning_rate=3e-4),
    # docs/refresh.md, "A pool of snapshots": the 3 most recent snapshots (refreshed every 8 steps, so up to 24 steps
    # old), each relay row's prefix written by one of them drawn uniformly
    "soup_pool3_uniform_r0.5_T8": dict(
        prefix_ratio=0.5, behavior_refresh_interval=8, behavior_pool_size=3, behavior_pool_sampling="uniform"
    ),
    # docs/prefix_sources.md: prefixes cut from a reference answer per row, a correct walk drawn uniformly from the
    # prompt's answers (information no other setting has: an off-policy guide, as in LUFFY), denominators from a
    # frozen copy of the start policy; the refresh schedule (on-policy batch every T) is unchanged
    "soup_dataset_r0.5_T8": dict(
        prefix_source="dataset",
        prefix_dataset_column="reference_completion",
        prefix_ratio=0.5,
        behavior_refresh_interval=8,
    ),
}
DEFAULT_SETTINGS = [name for name in SETTINGS if not name.startswith("control_")]
TRAINING = dict(
    toy.TOY_TRAINING_DEFAULTS,
    max_completion_length=24,  # answers are 21 tokens (20 nodes + <eos>)
    learning_rate=1e-3,
)
EVAL_SEED = 10_000  # prompts and sampling seeds of the evaluation do not depend on the training seed
SMOKE = dict(
    settings=["dapo", "soup_r0.5_T8", "soup_dataset_r0.5_T8"],
    seeds=[0],
    max_steps=4,
    sft_steps=80,  # enough for the start policy to find a few correct walks
    eval_prompts=8,
    eval_samples=8,
    num_resamples=200,
)


def eval_prompts(num_prompts: int) -> list[tuple[str, str]]:
    """The first `num_prompts` (start, target) pairs of a fixed shuffle of all 144 (distinct prompts)."""
    import random

    pairs = [(s, t) for s in explore_task.NODES for t in explore_task.NODES]
    random.Random(EVAL_SEED).shuffle(pairs)
    if num_prompts > len(pairs):
        raise ValueError(f"--eval_prompts {num_prompts}: the task has {len(pairs)} distinct prompts")
    return pairs[:num_prompts]


def score(tokenizer, pairs, responses, n):
    """Per prompt: the correctness of its n responses and its number of distinct correct answers."""
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    correct, distinct = [], []
    for i, (start, target) in enumerate(pairs):
        rows = texts[i * n : (i + 1) * n]
        flags = [explore_task.is_correct_walk(text, start, target) for text in rows]
        correct.append(sum(flags))
        distinct.append(distinct_correct_count(rows, flags))
    return correct, distinct


def prompt_ids(tokenizer, pairs):
    template = explore_task.PROMPT_TEMPLATE
    return [tokenizer(template.format(start=s, target=t), add_special_tokens=False)["input_ids"] for s, t in pairs]


def generator(model, tokenizer):
    model.eval()
    return TransformersGenerator(
        model, pad_token_id=tokenizer.pad_token_id, eos_token_ids=[tokenizer.eos_token_id], batch_size=512
    )


def model_from(state_dict, tokenizer, seed):
    model = toy.build_tiny_model(tokenizer, seed=seed)
    model.load_state_dict(state_dict)
    return model.eval()


def start_policy(seed, sft_steps):
    """The seed's start policy (SFT) as a state dict, with its tokenizer."""
    model, tokenizer = explore_task.build_explore_policy(seed=seed, sft_steps=sft_steps)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, tokenizer


def evaluate_start(seed, config):
    """Start policy of a seed: its weights, its samples' correct and distinct counts, the responses relay reuses."""
    torch.set_num_threads(1)
    state, tokenizer = start_policy(seed, config["sft_steps"])
    pairs = eval_prompts(config["eval_prompts"])
    ids, n, budget = prompt_ids(tokenizer, pairs), config["eval_samples"], TRAINING["max_completion_length"]
    responses = generator(model_from(state, tokenizer, seed), tokenizer).generate(ids, budget, n=n, seed=EVAL_SEED)
    correct, distinct = score(tokenizer, pairs, responses, n)
    return {"seed": seed, "correct": correct, "distinct": distinct, "responses": responses, "state": state}


def train_and_evaluate(setting, seed, config, start):
    """One training run from `start` (`evaluate_start`'s result for the seed), then its evaluation: single-model
    sampling and relay from two earlier checkpoints (the start policy and the run at half its steps)."""
    from transformers import PrinterCallback, TrainerCallback

    from trl_soup import SOUPConfig, SOUPTrainer

    torch.set_num_threads(1)  # fastest for this model (see trl_soup.toy)
    began = time.perf_counter()
    tokenizer = toy.build_tokenizer()
    model = model_from(start["state"], tokenizer, seed).train()
    middle_step, checkpoints = max(1, config["max_steps"] // 2), {}

    class KeepMiddle(TrainerCallback):
        def on_step_end(self, args, trainer_state, control, model=None, **kwargs):
            if trainer_state.global_step == middle_step:
                checkpoints["middle"] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    args = SOUPConfig(
        output_dir=os.path.join(config["output_dir"], "runs", f"{setting}_seed{seed}"),
        **{
            **TRAINING,
            "seed": seed,
            "data_seed": seed,
            "max_steps": config["max_steps"],
            "learning_rate": config["learning_rate"],
            **SETTINGS[setting],  # a setting may override a training default (the control's learning rate)
        },
        log_position_statistics=True,
        disable_tqdm=True,
        reward_weights=[1.0, 0.0],  # trained on the shaped reward; the binary one (correct walks) is logged
    )
    trainer = SOUPTrainer(
        model=model,
        reward_funcs=[explore_task.shaped_walk_reward, explore_task.walk_reward],
        args=args,
        train_dataset=explore_task.build_walk_dataset(
            512, seed=seed, references=SETTINGS[setting].get("prefix_source") == "dataset"
        ),
        processing_class=tokenizer,
        callbacks=[KeepMiddle()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    train_seconds = time.perf_counter() - began
    logs = [h for h in trainer.state.log_history if "reward" in h]
    run = {
        "setting": setting,
        "seed": seed,
        "reward": [h["reward"] for h in logs],
        "train_correct": [h["rewards/walk_reward/mean"] for h in logs],
        "prefix_fraction": [h.get("soup/prefix_fraction", 0.0) for h in logs],
        "clip_ratio_prefix": [h.get("soup/clip_ratio/prefix") for h in logs],
        "clip_ratio_continuation": [h.get("soup/clip_ratio/continuation") for h in logs],
        "refreshed": [sum(h.get(f"soup/refresh/{why}", 0.0) for why in ("start", "interval", "policy")) for h in logs],
        "completion_length": [h.get("completions/mean_length") for h in logs],
        "position": position_curves(logs),
    }
    final = trainer.model.eval()
    pairs = eval_prompts(config["eval_prompts"])
    ids, n, budget = prompt_ids(tokenizer, pairs), config["eval_samples"], TRAINING["max_completion_length"]
    eos = [tokenizer.eos_token_id]
    final_generator = generator(final, tokenizer)
    run["correct"], run["distinct"] = score(tokenizer, pairs, final_generator.generate(ids, budget, n, EVAL_SEED), n)
    relay_sources = {
        "start": start["responses"],
        "middle": generator(model_from(checkpoints["middle"], tokenizer, seed), tokenizer).generate(
            ids, budget, n, EVAL_SEED
        ),
    }
    for source, prefix_responses in relay_sources.items():
        responses, _ = relay_generate(
            None,
            final_generator,
            ids,
            budget,
            n,
            config["relay_ratio"],
            eos,
            EVAL_SEED,
            prefix_responses=prefix_responses,
        )
        run[f"relay_{source}_correct"], run[f"relay_{source}_distinct"] = score(tokenizer, pairs, responses, n)
    run["seconds"] = {"train": train_seconds, "total": time.perf_counter() - began}
    return run


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation: per setting, (seed x prompt) tables -> means with bootstrap intervals
# ---------------------------------------------------------------------------------------------------------------------


def summarize(start_runs, runs, config):
    n, resamples = config["eval_samples"], config["num_resamples"]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    ci = lambda table: bootstrap_ci(table, num_resamples=resamples, seed=0)  # noqa: E731
    rows = {"start": {"correct": [r["correct"] for r in start_runs], "distinct": [r["distinct"] for r in start_runs]}}
    for setting in config["settings"]:
        mine = sorted((r for r in runs if r["setting"] == setting), key=lambda r: r["seed"])
        rows[setting] = {key: [r[key] for r in mine] for key in mine[0] if key.endswith(("correct", "distinct"))}
    summary = {"ks": ks, "pass_at_k": {}, "distinct": {}, "correct_share": {}, "vs_dapo": {}, "relay": {}}
    for name, table in rows.items():
        summary["pass_at_k"][name] = {str(k): ci(pass_table(table["correct"], n, k)) for k in range(1, n + 1)}
        summary["distinct"][name] = ci(table["distinct"])
        summary["correct_share"][name] = ci([[c / n for c in row] for row in table["correct"]])
        summary["solved_prompts"] = summary.get("solved_prompts", {})
        summary["solved_prompts"][name] = ci([[float(c > 0) for c in row] for row in table["correct"]])
    baseline = rows.get("dapo")
    for name, table in rows.items():
        if name in ("start",) or baseline is None:
            continue
        summary["vs_dapo"][name] = {
            **{
                f"pass@{k}": ci(difference(pass_table(table["correct"], n, k), pass_table(baseline["correct"], n, k)))
                for k in ks
            },
            "distinct": ci(difference(table["distinct"], baseline["distinct"])),
        }
        summary["relay"][name] = {}
        for source in ("start", "middle"):
            relay = table[f"relay_{source}_correct"]
            summary["relay"][name][source] = {
                "pass_at_k": {str(k): ci(pass_table(relay, n, k)) for k in ks},
                "minus_final": {
                    str(k): ci(difference(pass_table(relay, n, k), pass_table(table["correct"], n, k))) for k in ks
                },
                "distinct": ci(table[f"relay_{source}_distinct"]),
            }
    summary["dapo_vs_start_distinct"] = (
        ci(difference(rows["dapo"]["distinct"], rows["start"]["distinct"])) if "dapo" in rows else None
    )
    return summary


def difference_panel(axis, curves, title):
    """One line per setting of {k: interval} with its 95% band, on a log-2 k axis, and the zero line."""
    for name, by_k in curves.items():
        ks = sorted(by_k)
        axis.plot(ks, [by_k[k]["mean"] for k in ks], marker="o", label=name)
        axis.fill_between(ks, [by_k[k]["low"] for k in ks], [by_k[k]["high"] for k in ks], alpha=0.1)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("k")
    axis.set_title(title)
    axis.legend(fontsize=7)


def plot(results, figures_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, names = results["summary"], results["config"]["settings"]
    by_setting = {name: [r for r in results["runs"] if r["setting"] == name] for name in names}

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for axis, key, title in zip(
        axes, ("reward", "train_correct"), ("shaped reward (trained on)", "share of correct walks"), strict=True
    ):
        for name in names:
            curve = mean_curve([r[key] for r in by_setting[name]])
            smooth = [sum(curve[max(0, i - 9) : i + 1]) / len(curve[max(0, i - 9) : i + 1]) for i in range(len(curve))]
            axis.plot(range(1, len(curve) + 1), smooth, label=name)
        axis.set_xlabel("step")
        axis.set_title(f"{title}: training batches, {len(results['config']['seeds'])} seeds, 10-step mean")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(figures_dir, "explore_reward.png"), dpi=110)

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name in ["start", *names]:
        curve = summary["pass_at_k"][name]
        ks = sorted(int(k) for k in curve)
        axes[0].plot(ks, [curve[str(k)]["mean"] for k in ks], label=name)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("k")
    axes[0].set_ylabel("pass@k")
    axes[0].set_title("pass@k (mean over seeds and prompts)")
    axes[0].legend(fontsize=7)
    vs_dapo = {name: {k: summary["vs_dapo"][name][f"pass@{k}"] for k in summary["ks"]} for name in names[1:]}
    difference_panel(axes[1], vs_dapo, "pass@k minus DAPO's (paired), 95% bootstrap CI")
    figure.tight_layout()
    figure.savefig(os.path.join(figures_dir, "explore_pass_at_k.png"), dpi=110)

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for axis, source in zip(axes, ("start", "middle"), strict=True):
        relay = {
            name: {k: summary["relay"][name][source]["minus_final"][str(k)] for k in summary["ks"]} for name in names
        }
        difference_panel(axis, relay, f"relay ({source} checkpoint writes the first half) minus final alone")
    figure.tight_layout()
    figure.savefig(os.path.join(figures_dir, "explore_relay.png"), dpi=110)

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    centers = [100 * (i + 0.5) / BINS for i in range(BINS)]
    for name in names:
        for axis, key in zip(axes, ("entropy", "clip_ratio"), strict=True):
            axis.plot(centers, mean_curve([r["position"][key] for r in by_setting[name]]), marker="o", label=name)
    for axis, title in zip(axes, ("entropy", "clip ratio"), strict=True):
        axis.set_xlabel("relative token position (%)")
        axis.set_title(f"{title} by position, mean over steps and seeds")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(figures_dir, "explore_position.png"), dpi=110)


def run_study(config: dict, workers: int = 1) -> dict:
    """Every start policy and run of `config`, then the summary. Same config -> same numbers (timings aside)."""
    seeds = config["seeds"]
    jobs = [(setting, seed) for setting in config["settings"] for seed in seeds]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            start_runs = list(pool.map(evaluate_start, seeds, [config] * len(seeds)))
            starts = {r["seed"]: r for r in start_runs}
            futures = [pool.submit(train_and_evaluate, s, seed, config, starts[seed]) for s, seed in jobs]
            runs = []
            for future in futures:
                runs.append(future.result())
                report(runs[-1])
    else:
        start_runs = [evaluate_start(seed, config) for seed in seeds]
        starts = {r["seed"]: r for r in start_runs}
        runs = []
        for setting, seed in jobs:
            runs.append(train_and_evaluate(setting, seed, config, starts[seed]))
            report(runs[-1])
    for r in start_runs:
        del r["responses"], r["state"]
    return {"config": config, "start": start_runs, "runs": runs, "summary": summarize(start_runs, runs, config)}


def report(run):
    n = len(run["correct"])
    print(
        f"{run['setting']:>24} seed {run['seed']}: reward {sum(run['reward'][:5]) / 5:.3f} -> "
        f"{sum(run['reward'][-5:]) / 5:.3f}, correct/prompt {sum(run['correct']) / n:.1f}, "
        f"distinct/prompt {sum(run['distinct']) / n:.1f}, {run['seconds']['total']:.0f} s",
        flush=True,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Reading a results.json: markdown tables (docs/results.md is written from them) and a run-to-run comparison
# ---------------------------------------------------------------------------------------------------------------------


def markdown_tables(results) -> str:
    """The tables of docs/results.md, from a results.json (every number there comes from here)."""
    summary, config = results["summary"], results["config"]
    names, n, ks = config["settings"], config["eval_samples"], summary["ks"]
    top = ks[-1]
    runs = {
        name: sorted((r for r in results["runs"] if r["setting"] == name), key=lambda r: r["seed"]) for name in names
    }
    lines = ["Solution set (95% CI over seeds and prompts):", ""]
    lines += [
        f"| policy | correct samples of {n} | distinct correct of {n} | prompts solved (pass@{top}) |",
        "|---|---|---|---|",
    ]
    for name in ["start", *names]:
        share = summary["correct_share"][name]
        scaled = {key: share[key] * n for key in share}
        distinct, solved = cell(summary["distinct"][name], 2), cell(summary["solved_prompts"][name])
        lines.append(f"| {name} | {cell(scaled, 2)} | {distinct} | {solved} |")
    if summary.get("dapo_vs_start_distinct"):
        lines += ["", f"dapo minus start, distinct correct per prompt: {cell(summary['dapo_vs_start_distinct'], 2)}"]
    lines += ["", "pass@k (95% CI):", "", "| policy | " + " | ".join(f"pass@{k}" for k in ks) + " |"]
    lines.append("|---" * (len(ks) + 1) + "|")
    for name in ["start", *names]:
        lines.append(f"| {name} | " + " | ".join(cell(summary["pass_at_k"][name][str(k)]) for k in ks) + " |")
    lines += ["", "Minus dapo, paired by seed and prompt (95% CI):", ""]
    lines += ["| setting | " + " | ".join(f"pass@{k}" for k in ks) + " | distinct |", "|---" * (len(ks) + 2) + "|"]
    for name in names[1:]:
        diff = summary["vs_dapo"][name]
        lines.append(
            f"| {name} | " + " | ".join(cell(diff[f"pass@{k}"]) for k in ks) + f" | {cell(diff['distinct'], 2)} |"
        )
    for source in ("start", "middle"):
        lines += [
            "",
            f"Relay ({source} checkpoint writes the first {config['relay_ratio']:.0%}) minus final alone:",
            "",
        ]
        lines += ["| setting | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
        for name in names:
            diff = summary["relay"][name][source]["minus_final"]
            lines.append(f"| {name} | " + " | ".join(cell(diff[str(k)]) for k in ks) + " |")
    lines += ["", "Per seed (pass@1 and distinct correct per prompt, held-out sampling):", ""]
    lines += [
        "| setting | " + " | ".join(f"seed {s}" for s in config["seeds"]) + " |",
        "|---" * (len(config["seeds"]) + 1) + "|",
    ]
    for name in ["start", *names]:
        rows = results["start"] if name == "start" else runs[name]
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{sum(r['correct']) / (n * len(r['correct'])):.3f} / {sum(r['distinct']) / len(r['distinct']):.2f}"
                for r in rows
            )
            + " |"
        )
    if "dapo" in runs:
        lines += ["", f"Seeds (of {len(config['seeds'])}) in which the setting's run is above dapo's (same seed):", ""]
        lines += [f"| setting | distinct correct | pass@{top} | pass@1 |", "|---|---|---|---|"]
        per_prompt = lambda r, k: sum(pass_at_k(n, c, k) for c in r["correct"]) / len(r["correct"])  # noqa: E731
        for name in names[1:]:
            pairs = list(zip(runs[name], runs["dapo"], strict=True))
            above = [
                sum(sum(a["distinct"]) > sum(b["distinct"]) for a, b in pairs),
                sum(per_prompt(a, top) > per_prompt(b, top) for a, b in pairs),
                sum(per_prompt(a, 1) > per_prompt(b, 1) for a, b in pairs),
            ]
            lines.append(f"| {name} | " + " | ".join(str(x) for x in above) + " |")
    lines += ["", "Training (mean over seeds; reward = shaped, correct = binary):", ""]
    lines += [
        "| setting | reward, steps 1-10 | reward, last 10 | correct, last 10 | prefix share, relay steps "
        "| refreshes | clip ratio prefix | clip ratio continuation | train s / run |",
        "|---" * 9 + "|",
    ]
    for name in names:
        rs = runs[name]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        first = mean([mean(r["reward"][:10]) for r in rs])
        last = mean([mean(r["reward"][-10:]) for r in rs])
        correct = mean([mean(r["train_correct"][-10:]) for r in rs])
        prefix = mean([p for r in rs for p in r["prefix_fraction"] if p > 0])
        refreshed = lambda r: r.get("refreshed", r.get("refresh_reason", []))  # noqa: E731 (0.2 results: the code)
        refreshes = mean([sum(1 for x in refreshed(r) if x) for r in rs])
        clip_p = mean(
            [
                c
                for r in rs
                for c, p in zip(r["clip_ratio_prefix"], r["prefix_fraction"], strict=True)
                if p > 0 and c is not None
            ]
        )
        clip_c = mean([c for r in rs for c in r["clip_ratio_continuation"] if c is not None])
        seconds = mean([r["seconds"]["train"] for r in rs])
        lines.append(
            f"| {name} | {first:.3f} | {last:.3f} | {correct:.3f} | {prefix:.3f} | {refreshes:.1f} | {clip_p:.4f} | "
            f"{clip_c:.4f} | {seconds:.0f} |"
        )
    lines += ["", "Entropy and clip ratio by 10% bin of relative position (mean over steps and seeds):", ""]
    lines += [
        "| setting | measure | " + " | ".join(f"{10 * i}-{10 * i + 10}%" for i in range(BINS)) + " |",
        "|---" * (BINS + 2) + "|",
    ]
    for name in names:
        for key in ("entropy", "clip_ratio"):
            curve = mean_curve([r["position"][key] for r in runs[name]])
            lines.append(f"| {name} | {key} | " + " | ".join(f"{v:.3f}" for v in curve) + " |")
    return "\n".join(lines)


def merge(all_results):
    """One results dict from several runs of the same start policies (e.g. the study and its control)."""
    merged = json.loads(json.dumps(all_results[0]))
    for other in all_results[1:]:
        if [(r["correct"], r["distinct"]) for r in other["start"]] != [
            (r["correct"], r["distinct"]) for r in merged["start"]
        ]:
            raise ValueError("merge: the runs do not share their start policies and evaluation")
        new = [name for name in other["config"]["settings"] if name not in merged["config"]["settings"]]
        merged["config"]["settings"] += new
        merged["runs"] += [r for r in other["runs"] if r["setting"] in new]
    return merged


def paired_against(results, baseline) -> str:
    """Every setting minus `baseline`, paired by seed and prompt: pass@1, pass@n and distinct correct (95% CI)."""
    config, n = results["config"], results["config"]["eval_samples"]
    ci = lambda table: bootstrap_ci(table, num_resamples=config["num_resamples"], seed=0)  # noqa: E731
    table = {
        name: sorted((r for r in results["runs"] if r["setting"] == name), key=lambda r: r["seed"])
        for name in config["settings"]
    }
    base = table[baseline]
    lines = [f"Minus {baseline}, paired by seed and prompt (95% CI):", ""]
    lines += [f"| setting | pass@1 | pass@{n} | distinct |", "|---|---|---|---|"]
    for name, runs in table.items():
        if name == baseline:
            continue
        cells = [
            cell(
                ci(
                    difference(
                        pass_table([r["correct"] for r in runs], n, k), pass_table([r["correct"] for r in base], n, k)
                    )
                )
            )
            for k in (1, n)
        ]
        cells.append(cell(ci(difference([r["distinct"] for r in runs], [r["distinct"] for r in base])), 2))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few-second run of 2 settings (what CI runs)")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--max_steps", type=int, default=100)
    parser.add_argument("--sft_steps", type=int, default=explore_task.SFT_STEPS)
    parser.add_argument("--eval_prompts", type=int, default=48)
    parser.add_argument("--eval_samples", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=TRAINING["learning_rate"])
    parser.add_argument("--relay_ratio", type=float, default=0.5)
    parser.add_argument("--num_resamples", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="parallel runs, one torch thread each")
    parser.add_argument("--output_dir", default="outputs/explore_study")
    parser.add_argument("--figures_dir", default=None, help="where the PNGs go (default: output_dir)")
    parser.add_argument("--no_figures", action="store_true")
    parser.add_argument(
        "--tables", nargs="+", default=None, metavar="RESULTS_JSON", help="print the markdown tables and exit"
    )
    parser.add_argument("--baseline", default=None, help="with --tables: add every setting minus this one")
    parser.add_argument("--replot", default=None, metavar="RESULTS_JSON", help="redraw the figures of a run and exit")
    parser.add_argument("--compare", nargs=2, default=None, metavar="RESULTS_JSON", help="compare two runs and exit")
    args = parser.parse_args(argv)
    if args.tables:
        loaded = []
        for path in args.tables:
            with open(path) as f:
                loaded.append(json.load(f))
        merged = merge(loaded)
        print(paired_against(merged, args.baseline) if args.baseline else markdown_tables(loaded[0]))
        return None
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f), args.figures_dir or os.path.dirname(args.replot))
        return None
    if args.compare:
        print(json.dumps(compare(*args.compare)))
        return None
    config = {
        key: getattr(args, key)
        for key in ("settings", "seeds", "max_steps", "sft_steps", "eval_prompts", "eval_samples", "num_resamples")
    }
    config.update(relay_ratio=args.relay_ratio, learning_rate=args.learning_rate, output_dir=args.output_dir)
    if args.smoke:
        config.update(SMOKE)
    torch.set_num_threads(1)
    began = time.perf_counter()
    results = run_study(config, workers=args.workers)
    results["seconds"] = time.perf_counter() - began
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    if not args.no_figures:
        figures_dir = args.figures_dir or args.output_dir
        os.makedirs(figures_dir, exist_ok=True)
        plot(results, figures_dir)
    summary = results["summary"]
    print(f"\n{'setting':>24} {'pass@1':>20} {'pass@' + str(summary['ks'][-1]):>20} {'distinct':>22}")
    for name in ["start", *config["settings"]]:
        p1, pk = summary["pass_at_k"][name]["1"], summary["pass_at_k"][name][str(summary["ks"][-1])]
        d = summary["distinct"][name]
        cell = lambda x: f"{x['mean']:.3f} [{x['low']:.3f},{x['high']:.3f}]"  # noqa: E731
        print(f"{name:>24} {cell(p1):>20} {cell(pk):>20} {cell(d):>22}")
    print(f"\nwrote {os.path.join(args.output_dir, 'results.json')} in {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
