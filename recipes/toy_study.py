"""Toy-scale study: on-policy DAPO vs SOUP at a few (ratio, T) settings, same start, steps and seeds, on 2 CPU cores.

Nothing is downloaded. Every run starts from the same warmed-up policy of `trl_soup.toy` (a 0.5M-parameter Qwen2
that knows the "copy the 8 digits" task but samples it unreliably), trains `max_steps` steps with the toy's tuned
settings (`toy.TOY_TRAINING_DEFAULTS`: DAPO loss, clip-higher 0.28, 4 prompts x 8 samples per step), and logs the
entropy and clip ratio per 10% bin of relative token position (paper Fig. 5). The on-policy baseline is SOUPTrainer
with T = 1, which is plain DAPO (no behavior copy is built; tests/test_loss.py checks that its loss equals
GRPOTrainer's). After training, each policy samples `eval_samples` answers for each of `eval_prompts` held-out prompts
at temperature 1; an answer is correct when it is exactly the 8 digits, and pass@k (the unbiased estimator of
`trl_soup.evaluation`) is computed for k = 1..n. The warmed-up start policy is evaluated the same way.

Launch (about 4 minutes on 2 CPU cores with the defaults):

    python recipes/toy_study.py --output_dir outputs/toy_study --figures_dir docs/figures
    python recipes/toy_study.py --settings dapo soup_r0.5_T8 --seeds 0 --max_steps 20   # quick look

Writes `results.json` (per run: reward and exact match per step, position curves; per setting: pass@k and the correct
count of each (seed, prompt) row) and three figures:
`toy_study_reward.png`, `toy_study_pass_at_k.png`, `toy_study_position.png`.
"""

import argparse
import json
import os
import time

import torch
from transformers import PrinterCallback

from trl_soup import SOUPConfig, SOUPTrainer, toy
from trl_soup.cli.plot_positions import BINS, position_curves
from trl_soup.evaluation import correctness_summary

# name -> SOUPConfig overrides. "dapo" is the on-policy baseline (T = 1).
SETTINGS = {
    "dapo": dict(behavior_refresh_interval=1),
    "soup_r0.5_T8": dict(prefix_ratio=0.5, behavior_refresh_interval=8),  # paper's Qwen2.5-Math-7B setting
    "soup_r0.5_T4": dict(prefix_ratio=0.5, behavior_refresh_interval=4),
    "soup_r0.3_T4": dict(prefix_ratio=0.3, behavior_refresh_interval=4),  # paper's R1-Distill-1.5B setting
    "soup_r0.7_T8": dict(prefix_ratio=0.7, behavior_refresh_interval=8),
}
EVAL_SEED = 10_000  # the held-out prompts and the sampling seed do not depend on the training seed


@torch.no_grad()
def sample_correctness(model, tokenizer, dataset, num_samples, max_new_tokens, seed):
    """`num_samples` answers per prompt at temperature 1; correct = exactly the answer digits (then <eos>)."""
    model.eval()
    correctness = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for prompt, answer in zip(dataset["prompt"], dataset["answer"], strict=True):
            ids = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
            out = model.generate(
                **ids,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=num_samples,
                max_new_tokens=max_new_tokens,
            )
            texts = tokenizer.batch_decode(out[:, ids["input_ids"].size(1) :], skip_special_tokens=True)
            correctness.append([text == answer for text in texts])
    model.train()
    return correctness


def train_one(setting, seed, max_steps, output_dir):
    model, tokenizer = toy.build_toy_policy(seed=seed)
    args = SOUPConfig(
        output_dir=os.path.join(output_dir, "runs", f"{setting}_seed{seed}"),
        **{**toy.TOY_TRAINING_DEFAULTS, "seed": seed, "data_seed": seed, "max_steps": max_steps},
        log_position_statistics=True,
        disable_tqdm=True,
        reward_weights=[1.0, 0.0],  # exact match is logged, not trained on
        **SETTINGS[setting],
    )
    trainer = SOUPTrainer(
        model=model,
        reward_funcs=[toy.char_match_reward, toy.exact_match_reward],
        args=args,
        train_dataset=toy.build_dataset(toy.TOY_NUM_PROMPTS, seed=seed),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    return (
        trainer.model,
        tokenizer,
        {
            "reward": [h["reward"] for h in logs],
            "exact_match": [h["rewards/exact_match_reward/mean"] for h in logs],
            "prefix_fraction": [h.get("soup/prefix_fraction", 0.0) for h in logs],
            "position": position_curves(logs),
        },
    )


def mean_curve(curves):
    return [sum(values) / len(values) for values in zip(*curves, strict=True)]


def plot(results, figures_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["settings"])
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        runs = results["settings"][name]["runs"]
        for axis, key in zip(axes, ("reward", "exact_match"), strict=True):
            curve = mean_curve([r[key] for r in runs])
            axis.plot(range(1, len(curve) + 1), curve, label=name)
    for axis, title in zip(axes, ("char-match reward (trained on)", "exact match (logged)"), strict=True):
        axis.set_xlabel("step")
        axis.set_title(f"{title}, mean over {len(results['seeds'])} seeds")
        axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(figures_dir, "toy_study_reward.png"), dpi=110)

    figure, axis = plt.subplots(figsize=(6, 4))
    for name in ["start", *names]:
        curve = results["pass_at_k"][name]
        ks = sorted(int(k) for k in curve)
        axis.plot(ks, [curve[str(k)] for k in ks], marker="o", label=name)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("k")
    axis.set_ylabel("pass@k")
    axis.set_title(f"pass@k on {results['eval_prompts']} held-out prompts")
    axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(figures_dir, "toy_study_pass_at_k.png"), dpi=110)

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    centers = [100 * (i + 0.5) / BINS for i in range(BINS)]
    for name in names:
        runs = results["settings"][name]["runs"]
        for axis, key in zip(axes, ("entropy", "clip_ratio"), strict=True):
            axis.plot(centers, mean_curve([r["position"][key] for r in runs]), marker="o", label=name)
    for axis, title in zip(axes, ("entropy", "clip ratio"), strict=True):
        axis.set_xlabel("relative token position (%)")
        axis.set_title(f"{title} by position, mean over steps and seeds")
        axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(figures_dir, "toy_study_position.png"), dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--eval_prompts", type=int, default=64)
    parser.add_argument("--eval_samples", type=int, default=16)
    parser.add_argument("--output_dir", default="outputs/toy_study")
    parser.add_argument("--figures_dir", default=None, help="where the PNGs go (default: output_dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # fastest for this model (see trl_soup.toy)
    figures_dir = args.figures_dir or args.output_dir
    os.makedirs(args.output_dir, exist_ok=True)
    os.makedirs(figures_dir, exist_ok=True)

    eval_set = toy.build_dataset(args.eval_prompts, seed=EVAL_SEED)
    max_new_tokens = toy.TOY_TRAINING_DEFAULTS["max_completion_length"]
    results = {
        "seeds": args.seeds,
        "max_steps": args.max_steps,
        "eval_prompts": args.eval_prompts,
        "eval_samples": args.eval_samples,
        "settings": {},
        "pass_at_k": {},
        "avg_at_n": {},
        "correct_counts": {},
    }
    correctness = {"start": []}
    for seed in args.seeds:
        model, tokenizer = toy.build_toy_policy(seed=seed)
        correctness["start"] += sample_correctness(
            model, tokenizer, eval_set, args.eval_samples, max_new_tokens, EVAL_SEED
        )
    for name in args.settings:
        runs, correctness[name] = [], []
        for seed in args.seeds:
            start = time.perf_counter()
            model, tokenizer, run = train_one(name, seed, args.max_steps, args.output_dir)
            run["seconds"] = time.perf_counter() - start
            run["seed"] = seed
            run_correctness = sample_correctness(
                model, tokenizer, eval_set, args.eval_samples, max_new_tokens, EVAL_SEED
            )
            run["avg_at_n"] = correctness_summary(run_correctness, ks=[1])["avg@n"]
            correctness[name] += run_correctness
            runs.append(run)
            k = min(5, len(run["reward"]))
            print(
                f"{name:>14} seed {seed}: reward {sum(run['reward'][:k]) / k:.3f} -> "
                f"{sum(run['reward'][-k:]) / k:.3f}, held-out avg@{args.eval_samples} {run['avg_at_n']:.3f}, "
                f"{run['seconds']:.0f} s",
                flush=True,
            )
        results["settings"][name] = {"config": SETTINGS[name], "runs": runs}
    for name, rows in correctness.items():  # pass@k pooled over seeds: one row per (seed, prompt)
        summary = correctness_summary(rows)
        results["pass_at_k"][name] = {str(k): v for k, v in summary["pass@k"].items()}
        results["avg_at_n"][name] = summary["avg@n"]
        results["correct_counts"][name] = summary["correct_counts"]

    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, figures_dir)

    print(
        f"\n{'setting':>14} {'reward first5':>13} {'last5':>6} {'exact last5':>11} {'pass@1':>7} {'pass@4':>7} "
        f"{'pass@' + str(args.eval_samples):>8} {'H first10%':>10} {'H last10%':>9}"
    )
    for name in ["start", *args.settings]:
        curve = results["pass_at_k"][name]
        row = f"{name:>14} "
        if name == "start":
            row += f"{'':>13} {'':>6} {'':>11} "
        else:
            runs = results["settings"][name]["runs"]
            reward, exact = mean_curve([r["reward"] for r in runs]), mean_curve([r["exact_match"] for r in runs])
            row += f"{sum(reward[:5]) / 5:>13.3f} {sum(reward[-5:]) / 5:>6.3f} {sum(exact[-5:]) / 5:>11.3f} "
        row += f"{curve['1']:>7.3f} {curve.get('4', float('nan')):>7.3f} {curve[str(args.eval_samples)]:>8.3f}"
        if name != "start":
            entropy = mean_curve([r["position"]["entropy"] for r in results["settings"][name]["runs"]])
            row += f" {entropy[0]:>10.3f} {entropy[-1]:>9.3f}"
        print(row)
    print(f"\nwrote {os.path.join(args.output_dir, 'results.json')} and 3 figures in {figures_dir}")


if __name__ == "__main__":
    main()
