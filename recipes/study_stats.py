"""Statistics of the studies (recipes/explore_study.py and its siblings): the size of the solution set a policy found
for one problem, and means over (training seed x problem) tables with a two-way bootstrap interval. Study code, kept
out of the library (`trl_soup.evaluation` holds what `trl-soup evaluate` needs: pass@k, relay inference)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from trl_soup.evaluation import pass_at_k


def distinct_correct_count(answers: Sequence, correctness: Sequence[bool]) -> int:
    """The number of different answers among the correct ones (how many solutions a policy found for one problem).

    Args:
        answers: the ``n`` sampled answers of one problem (any hashable: text, or a tuple of token ids).
        correctness: ``n`` booleans, whether each answer is correct.
    """
    if len(answers) != len(correctness):
        raise ValueError(f"distinct_correct_count: {len(answers)} answers but {len(correctness)} correctness values")
    return len({answer for answer, correct in zip(answers, correctness, strict=True) if correct})


def bootstrap_ci(
    values: Sequence[Sequence[float]],
    *,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Mean of a (seed x problem) table and its percentile bootstrap interval, resampling seeds and problems.

    ``values[s][p]`` is a statistic of problem ``p`` in training run ``s`` (e.g. pass@k of that problem, or the
    difference between two settings run with the same seed on the same problem: a paired comparison). Every problem
    is evaluated in every run (a crossed design), so each resample draws ``S`` seeds and ``P`` problems with
    replacement, independently, and takes the mean of the ``S x P`` cells they select (a two-way bootstrap: both the
    spread between training seeds and the spread between problems widen the interval). With one seed it is the plain
    bootstrap over problems.

    Args:
        values: ``S`` rows (seeds) of ``P`` numbers (problems), ``S, P >= 1``.
        num_resamples: bootstrap resamples ``B``.
        confidence: the interval's coverage, in (0, 1); the bounds are the ``(1 - confidence) / 2`` and
            ``(1 + confidence) / 2`` quantiles (linear interpolation) of the ``B`` resampled means.
        seed: seed of a private ``torch.Generator`` (the global RNG is untouched): same inputs, same interval.

    Returns:
        ``{"mean": float, "low": float, "high": float}`` (``mean`` is the plain mean of all cells).
    """
    table = torch.tensor([[float(v) for v in row] for row in values], dtype=torch.float64)
    if table.dim() != 2 or table.numel() == 0:
        raise ValueError("bootstrap_ci: values must be a non-empty table of S rows (seeds) by P columns (problems)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"bootstrap_ci: num_resamples must be >= 1, got {num_resamples}")
    num_seeds, num_problems = table.shape
    generator = torch.Generator().manual_seed(seed)
    seed_index = torch.randint(num_seeds, (num_resamples, num_seeds), generator=generator)
    problem_index = torch.randint(num_problems, (num_resamples, num_problems), generator=generator)
    means = table[seed_index[:, :, None], problem_index[:, None, :]].mean(dim=(1, 2))  # (B,)
    alpha = (1.0 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return {"mean": table.mean().item(), "low": low, "high": high}


# ---------------------------------------------------------------------------------------------------------------------
# Tables of (seed x problem) cells, and reading results.json files back
# ---------------------------------------------------------------------------------------------------------------------


def pass_table(correct_by_seed, n, k):
    return [[pass_at_k(n, c, k) for c in row] for row in correct_by_seed]


def difference(a, b):
    return [[x - y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)]


def mean_curve(curves):
    curves = [[float("nan") if v is None else v for v in c] for c in curves]
    return [sum(values) / len(values) for values in zip(*curves, strict=True)]


def cell(x, digits=3):
    return f"{x['mean']:.{digits}f} [{x['low']:.{digits}f}, {x['high']:.{digits}f}]"


def numbers(value, path=""):
    """Every number of a results.json, by path (timings left out: they are the one thing that is not reproduced)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in ("seconds", "output_dir"):
                yield from numbers(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}/{i}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)


def compare(path_a, path_b) -> dict:
    """How two results.json files differ: the number of values, how many differ, the largest difference."""
    with open(path_a) as f:
        a = dict(numbers(json.load(f)))
    with open(path_b) as f:
        b = dict(numbers(json.load(f)))
    shared = sorted(set(a) & set(b))
    differ = [p for p in shared if a[p] != b[p] and not (a[p] != a[p] and b[p] != b[p])]  # NaN == NaN here
    largest = max((abs(a[p] - b[p]) for p in differ), default=0.0)
    return {"values": len(shared), "only_in_one": len(set(a) ^ set(b)), "differ": len(differ), "max_abs_diff": largest}
