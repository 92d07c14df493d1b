"""Plot entropy and clip ratio by relative token position (paper Fig. 5) from a SOUP run's logs.

Train with `--log_position_statistics true` (SOUPConfig.log_position_statistics), then:

    python recipes/plot_position_statistics.py outputs/soup_toy/checkpoint-60/trainer_state.json --output fig5.png
    python recipes/plot_position_statistics.py RUN_A/trainer_state.json RUN_B/trainer_state.json --labels SOUP GRPO

Each curve averages the logged soup/position/<metric>/bin_<i> values over the steps of a run (or --steps A:B).
"""

import argparse
import json
import math

BINS = 10


def position_curves(log_history, first_step=0, last_step=None):
    """Mean of soup/position/{entropy,clip_ratio}/bin_i over the logged steps in [first_step, last_step]."""
    curves = {}
    for name in ("entropy", "clip_ratio"):
        curve = []
        for i in range(BINS):
            key = f"soup/position/{name}/bin_{i}"
            values = [h[key] for h in log_history if h.get(key) is not None and not math.isnan(h[key])
                      and h.get("step", 0) >= first_step and (last_step is None or h.get("step", 0) <= last_step)]
            curve.append(sum(values) / len(values) if values else float("nan"))
        curves[name] = curve
    return curves


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("states", nargs="+", help="trainer_state.json files")
    parser.add_argument("--labels", nargs="*", default=None)
    parser.add_argument("--steps", default=None, help="A:B, the step range to average")
    parser.add_argument("--output", default="position_statistics.png")
    args = parser.parse_args()
    first, last = 0, None
    if args.steps:
        a, b = args.steps.split(":")
        first, last = int(a or 0), (int(b) if b else None)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    centers = [100 * (i + 0.5) / BINS for i in range(BINS)]
    labels = args.labels or args.states
    for path, label in zip(args.states, labels, strict=True):
        with open(path) as f:
            curves = position_curves(json.load(f)["log_history"], first, last)
        for axis, name in zip(axes, ("entropy", "clip_ratio"), strict=True):
            axis.plot(centers, curves[name], marker="o", label=label)
    for axis, title in zip(axes, ("Entropy", "Clip ratio"), strict=True):
        axis.set_xlabel("relative token position (%)")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
