"""Plot entropy and clip ratio by relative token position (paper Fig. 5) from a SOUP run's logs.

Train with `--log_position_statistics true` (SOUPConfig.log_position_statistics), then:

    trl-soup plot-positions outputs/soup_toy/checkpoint-60/trainer_state.json --output fig5.png
    trl-soup plot-positions RUN_A/trainer_state.json RUN_B/trainer_state.json --labels SOUP GRPO

Each curve averages the logged soup/position/<metric>/bin_<i> values over the steps of a run (or --steps A:B). A file
without those values (a run trained without --log_position_statistics, or a step range with none) is refused. From a
checkout, `python recipes/plot_position_statistics.py` runs this same code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

__all__ = ["BINS", "cli_main", "load_log_history", "main", "position_curves"]

BINS = 10
METRICS = ("entropy", "clip_ratio")


def position_curves(log_history, first_step=0, last_step=None):
    """Mean of soup/position/{entropy,clip_ratio}/bin_i over the logged steps in [first_step, last_step]."""
    curves = {}
    for name in METRICS:
        curve = []
        for i in range(BINS):
            key = f"soup/position/{name}/bin_{i}"
            values = [
                h[key]
                for h in log_history
                if h.get(key) is not None
                and not math.isnan(h[key])
                and h.get("step", 0) >= first_step
                and (last_step is None or h.get("step", 0) <= last_step)
            ]
            curve.append(sum(values) / len(values) if values else float("nan"))
        curves[name] = curve
    return curves


def load_log_history(path: str) -> list[dict]:
    """The `log_history` of a trainer_state.json; a ValueError says what is missing."""
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read it as a trainer_state.json ({error})") from error
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ValueError(f"{path}: no 'log_history' list; pass the trainer_state.json of a run")
    return state["log_history"]


def parse_steps(steps: str | None) -> tuple[int, int | None]:
    if not steps:
        return 0, None
    first, sep, last = steps.partition(":")
    if not sep:
        raise ValueError(f"--steps {steps!r}: expected A:B (either side may be empty)")
    return int(first or 0), (int(last) if last else None)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of `trl-soup plot-positions`."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("states", nargs="+", help="trainer_state.json files")
    parser.add_argument("--labels", nargs="*", default=None)
    parser.add_argument("--steps", default=None, help="A:B, the step range to average")
    parser.add_argument("--output", default="position_statistics.png")
    return parser


def load_runs(states: list[str], labels: list[str], steps: str | None) -> list[tuple[str, dict]]:
    """``(label, curves)`` of each trainer_state.json over --steps; a ValueError names a file (or a step range) without
    position statistics."""
    first, last = parse_steps(steps)
    runs = []
    for path, label in zip(states, labels, strict=True):
        curves = position_curves(load_log_history(path), first, last)
        if all(math.isnan(value) for curve in curves.values() for value in curve):
            window = "" if steps is None else f" in steps {steps}"
            raise ValueError(
                f"{path}: no position statistics (soup/position/entropy/bin_i, "
                f"soup/position/clip_ratio/bin_i){window}; train with --log_position_statistics true"
            )
        runs.append((label, curves))
    return runs


def plot_runs(runs: list[tuple[str, dict]], output: str) -> None:
    """Entropy and clip ratio against relative token position, one panel each and one line per run, saved to
    ``output`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    centers = [100 * (i + 0.5) / BINS for i in range(BINS)]
    for label, curves in runs:
        for axis, name in zip(axes, METRICS, strict=True):
            axis.plot(centers, curves[name], marker="o", label=label)
    for axis, title in zip(axes, ("Entropy", "Clip ratio"), strict=True):
        axis.set_xlabel("relative token position (%)")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(output, dpi=120)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`trl-soup plot-positions`: one figure of the position curves of every given run (module docstring)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    labels = args.labels or args.states
    if len(labels) != len(args.states):
        parser.error(f"--labels: {len(labels)} labels for {len(args.states)} files")
    try:
        runs = load_runs(args.states, labels, args.steps)
    except ValueError as error:
        parser.error(str(error))
    plot_runs(runs, args.output)
    print(f"wrote {args.output}")
    return 0


cli_main = main  # the `trl-soup plot-positions` entry

if __name__ == "__main__":
    sys.exit(main())
