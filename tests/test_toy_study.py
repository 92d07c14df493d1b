"""recipes/toy_study.py runs end to end at a tiny size; its pass@k agrees with a brute force over its own counts."""

from __future__ import annotations

import itertools
import json

import pytest
from launch import REPO, run_python


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.slow
def test_toy_study_small(tmp_path):
    result = run_python(
        [
            REPO / "recipes" / "toy_study.py",
            "--settings",
            "dapo",
            "soup_r0.5_T4",
            "--seeds",
            "0",
            "--max_steps",
            "6",
            "--eval_prompts",
            "4",
            "--eval_samples",
            "4",
            "--output_dir",
            tmp_path,
        ],
        env={"OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["pass_at_k"]) == {"start", "dapo", "soup_r0.5_T4"}
    for name, counts in results["correct_counts"].items():
        assert len(counts) == 4  # one row per (seed, prompt)
        for k in range(1, 5):
            expected = sum(brute_force_pass_at_k(4, c, k) for c in counts) / len(counts)
            assert results["pass_at_k"][name][str(k)] == pytest.approx(expected, abs=1e-12)
    dapo, soup = (results["settings"][name]["runs"][0] for name in ("dapo", "soup_r0.5_T4"))
    assert len(dapo["reward"]) == len(soup["reward"]) == 6
    assert all(p == 0.0 for p in dapo["prefix_fraction"])  # T = 1: plain DAPO, never a prefix
    # T = 4: steps 2-4 are relay batches (one generation batch per step), steps 1 and 5 refresh
    assert [p > 0 for p in soup["prefix_fraction"]] == [False, True, True, True, False, True]
    assert len(soup["position"]["entropy"]) == 10 and soup["position"]["entropy"][0] > 0
    for figure in ("toy_study_reward.png", "toy_study_pass_at_k.png", "toy_study_position.png"):
        assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG"
