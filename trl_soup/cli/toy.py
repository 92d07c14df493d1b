"""SOUP on the embedded default: a tiny Qwen2 model and the synthetic "copy the digits" task, built locally.

Nothing is downloaded. The policy is warmed up for a few seconds (it knows the task but samples unreliably), then
SOUPTrainer trains it with relay sampling: every `behavior_refresh_interval` generation batches a frozen copy of the
policy is refreshed; in between, that copy writes the first `prefix_ratio` of each response and the current policy
finishes it. Each step prints the reward and the soup/ metrics; a summary closes the run.

Launch (2 CPU cores, about a minute):

    trl-soup toy                               # installed command (python -m trl_soup.cli toy)
    bash scripts/demo.sh                       # from a checkout: set-up + recipes/soup_toy.py, this same code
    trl-soup toy --prefix_strategy entropy --prefix_entropy_top_k 4 --behavior_refresh_interval 4
    trl-soup toy --compare_grpo                # also run TRL's GRPOTrainer with the same settings and seed

Any SOUPConfig / GRPOConfig field can be given as `--field value`.
"""

import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer, TrlParser

from trl_soup import SOUPConfig, SOUPTrainer, toy

__all__ = ["StepPrinter", "ToyArguments", "cli_main", "main", "summarize"]


@dataclass
class ToyArguments:
    num_prompts: int = field(default=toy.TOY_NUM_PROMPTS, metadata={"help": "Training prompts of the toy task."})
    compare_grpo: bool = field(default=False, metadata={"help": "Also train GRPOTrainer with the same settings."})
    torch_threads: int = field(default=1, metadata={"help": "torch threads (1 is fastest for this tiny model)."})


class StepPrinter(TrainerCallback):
    """One line per step: reward and the SOUP metrics that matter."""

    COLUMNS = [
        ("reward", "reward"),
        ("soup/relay_batch", "relay"),
        ("soup/behavior_age", "age"),
        ("soup/prefix_fraction", "prefix"),
        ("soup/clip_ratio/prefix", "clip_pre"),
        ("soup/clip_ratio/continuation", "clip_cont"),
        ("soup/entropy/prefix", "H_pre"),
        ("soup/entropy/continuation", "H_cont"),
        ("soup/log_ratio/prefix_abs_mean", "|logr|_pre"),
    ]

    def __init__(self, name):
        self.name = name
        print(f"[{self.name}] {'step':>4} " + " ".join(f"{label:>10}" for _, label in self.COLUMNS), flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs:
            return
        cells = []
        for key, _ in self.COLUMNS:
            value = logs.get(key)
            cells.append(f"{'-':>10}" if value is None else f"{value:>10.3f}")
        print(f"[{self.name}] {state.global_step:>4} " + " ".join(cells), flush=True)


def summarize(name, trainer, seconds):
    logs = [h for h in trainer.state.log_history if "reward" in h]
    rewards = [h["reward"] for h in logs]
    exact = [h.get("rewards/exact_match_reward/mean", float("nan")) for h in logs]
    k = min(5, len(rewards))
    line = (
        f"[{name}] reward {sum(rewards[:k]) / k:.3f} (first {k} steps) -> {sum(rewards[-k:]) / k:.3f} "
        f"(last {k}), exact match {sum(exact[:k]) / k:.2f} -> {sum(exact[-k:]) / k:.2f}, {len(rewards)} steps in "
        f"{seconds:.0f} s"
    )
    relay = [h for h in logs if h.get("soup/relay_batch") == 1.0]
    if relay:
        fraction = sum(h["soup/prefix_fraction"] for h in relay) / len(relay)
        line += f"; {len(relay)} relay batches, behavior wrote {fraction:.0%} of their tokens"
    print(line, flush=True)
    return rewards


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = TrlParser((ToyArguments, SOUPConfig), prog=prog)
    parser.set_defaults(output_dir="outputs/soup_toy", disable_tqdm=True, **toy.TOY_TRAINING_DEFAULTS)
    toy_args, soup_args = parser.parse_args_and_config(argv)
    torch.set_num_threads(toy_args.torch_threads)

    dataset = toy.build_dataset(toy_args.num_prompts, seed=soup_args.seed)
    # The exact-match reward is logged but not trained on (weight 0).
    reward_funcs = [toy.char_match_reward, toy.exact_match_reward]
    soup_args.reward_weights = [1.0, 0.0]
    print(
        f"SOUP: prefix_strategy={soup_args.prefix_strategy} prefix_ratio={soup_args.prefix_ratio} "
        f"T={soup_args.behavior_refresh_interval} steps={soup_args.max_steps} lr={soup_args.learning_rate}",
        flush=True,
    )

    runs = [("SOUP", SOUPTrainer, soup_args)]
    if toy_args.compare_grpo:
        grpo_fields = {f for f in GRPOConfig.__dataclass_fields__ if GRPOConfig.__dataclass_fields__[f].init}
        grpo_args = GRPOConfig(
            **{k: v for k, v in soup_args.to_dict().items() if k in grpo_fields and k in toy.TOY_TRAINING_DEFAULTS}
            | {"output_dir": soup_args.output_dir + "_grpo", "reward_weights": [1.0, 0.0], "disable_tqdm": True}
        )
        runs.append(("GRPO", GRPOTrainer, grpo_args))

    summaries = []
    for name, trainer_cls, args in runs:
        start = time.perf_counter()
        model, tokenizer = toy.build_toy_policy(seed=args.seed)  # the same warmed-up start for every run
        trainer = trainer_cls(
            model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset, processing_class=tokenizer
        )
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(StepPrinter(name))
        trainer.train()
        summaries.append((name, trainer, time.perf_counter() - start))
    print("\nSummary")
    for name, trainer, seconds in summaries:
        summarize(name, trainer, seconds)
    return 0


cli_main = main  # the `trl-soup toy` entry

if __name__ == "__main__":
    sys.exit(main())
