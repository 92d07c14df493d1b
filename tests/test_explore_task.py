"""The exploration task (recipes/explore_task.py), the study's statistics helpers, and the study's smoke run."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import sys

import numpy as np
import pytest
from launch import REPO

from trl_soup.evaluation import pass_at_k

sys.path.insert(0, str(REPO / "recipes"))  # study code lives beside the study scripts, not in the library
import explore_task as et  # noqa: E402
from study_stats import bootstrap_ci, distinct_correct_count  # noqa: E402


def brute_force_walks(start: str, target: str, length: int) -> list[str]:
    """Every walk of `length` steps from `start` to `target`, by enumeration of node strings."""
    found = []
    for nodes in itertools.product(et.NODES, repeat=length):
        walk = "".join(nodes)
        previous, ok = start, True
        for node in walk:
            ok = ok and node in et.GRAPH[previous]
            previous = node
        if ok and walk[-1] == target:
            found.append(walk)
    return found


def a_correct_walk(start: str, target: str, rng: random.Random) -> str:
    """A random correct walk, built backwards from the walk counts (each step keeps the target reachable)."""
    walk, node = [], start
    for step in range(et.WALK_LENGTH):
        left = et.WALK_LENGTH - step - 1
        choices = [m for m in et.GRAPH[node] if (m == target if left == 0 else et.count_walks(m, target, left) > 0)]
        node = rng.choice(choices)
        walk.append(node)
    return "".join(walk)


# ---------------------------------------------------------------------------------------------------------------------
# The graph and the verifier
# ---------------------------------------------------------------------------------------------------------------------


def test_graph_shape():
    assert len(et.NODES) == 12 and set(et.GRAPH) == set(et.NODES)
    for node, successors in et.GRAPH.items():
        assert len(set(successors)) == et.OUT_DEGREE == 3 and node not in successors
    # every prompt has many correct answers: every (start, target) pair has walks of the task's length
    counts = [et.count_walks(s, t) for s in et.NODES for t in et.NODES]
    assert min(counts) > 10**7


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_count_walks_matches_enumeration(length):
    for start, target in [("a", "b"), ("c", "c"), ("l", "e"), ("f", "k")]:
        assert et.count_walks(start, target, length) == len(brute_force_walks(start, target, length))


def test_distance_to_matches_walk_counts():
    # shortest distance d = the fewest steps with a walk; the BFS must agree with the matrix powers
    for target in et.NODES:
        distance = et.distance_to(target)
        for node in et.NODES:
            if node == target:
                assert distance[node] == 0
                continue
            fewest = next(length for length in range(1, 13) if et.count_walks(node, target, length) > 0)
            assert distance[node] == fewest


def test_verifier_on_hand_made_walks():
    rng = random.Random(0)
    for start, target in [("a", "b"), ("c", "c"), ("l", "e"), ("k", "a")]:
        walk = a_correct_walk(start, target, rng)
        assert et.is_correct_walk(walk, start, target)
        assert et.valid_edge_share(walk, start) == 1.0
        assert not et.is_correct_walk(walk, start, next(n for n in et.NODES if n != target))  # other target
        assert not et.is_correct_walk(walk[:-1], start, target)  # too short
        assert not et.is_correct_walk(walk + walk[-1], start, target)  # too long
        assert not et.is_correct_walk(walk + " ", start, target)  # trailing text
        # one node replaced by a non-successor of the node before it: a missing edge
        i = 7
        previous = start if i == 0 else walk[i - 1]
        bad = next(n for n in et.NODES if n not in et.GRAPH[previous])
        broken = walk[:i] + bad + walk[i + 1 :]
        assert not et.is_correct_walk(broken, start, target)
        assert et.valid_edge_share(broken, start) < 1.0
    # the first node must be a successor of the start, not the start itself
    walk = a_correct_walk("a", "b", rng)
    assert not et.is_correct_walk(walk, "c" if walk[0] not in et.GRAPH["c"] else "d", "b")


def test_rewards_trl_signature():
    rng = random.Random(1)
    good = a_correct_walk("a", "d", rng)
    # a valid walk of the right length that ends next to the target (distance 1): partial credit
    near = next(
        w for w in (et.sample_walk("a", et.WALK_LENGTH, rng) for _ in range(10_000)) if et.distance_to("d")[w[-1]] == 1
    )
    completions = [good, near, "x" * et.WALK_LENGTH, ""]
    kwargs = dict(start=["a"] * 4, target=["d"] * 4)
    assert et.walk_reward(["walk:a>d="] * 4, completions, **kwargs) == [1.0, 0.0, 0.0, 0.0]
    assert et.shaped_walk_reward(["walk:a>d="] * 4, completions, **kwargs) == [1.0, et.PARTIAL_CREDIT, 0.0, 0.0]
    conversational = [[{"role": "assistant", "content": good}]]
    assert et.walk_reward(None, conversational, start=["a"], target=["d"]) == [1.0]


def test_dataset_and_prompt_round_trip():
    dataset = et.build_walk_dataset(50, seed=3)
    assert dataset.column_names == ["prompt", "start", "target"]
    for prompt, start, target in zip(dataset["prompt"], dataset["start"], dataset["target"], strict=True):
        assert et.parse_prompt(prompt) == (start, target)
    assert et.build_walk_dataset(50, seed=3)["prompt"] == dataset["prompt"]


def test_dataset_references_are_correct_walks_of_their_row():
    plain, guided = et.build_walk_dataset(200, seed=3), et.build_walk_dataset(200, seed=3, references=True)
    assert guided.column_names == ["prompt", "start", "target", "reference_completion"]
    assert guided["prompt"] == plain["prompt"]  # the references do not change the prompts the other settings see
    for start, target, reference in zip(
        guided["start"], guided["target"], guided["reference_completion"], strict=True
    ):
        assert et.is_correct_walk(reference, start, target)
    # the rows of one prompt get different references (the solution set is wide), not one fixed answer
    by_prompt = {}
    for prompt, reference in zip(guided["prompt"], guided["reference_completion"], strict=True):
        by_prompt.setdefault(prompt, []).append(reference)
    repeated = [refs for refs in by_prompt.values() if len(refs) > 1]
    assert repeated and all(len(set(refs)) == len(refs) for refs in repeated)


@pytest.mark.parametrize("start,target", [("a", "b"), ("c", "c"), ("l", "e")])
def test_uniform_correct_walk_is_uniform_over_the_answers(start, target):
    """4-step walks, so the answers can be enumerated: every draw is correct, every answer is drawn, and with 600
    draws per answer each frequency is within 20% of 1/count (a deterministic rng: the same draws every run)."""
    answers = brute_force_walks(start, target, 4)
    assert len(answers) >= 2
    rng = random.Random(0)
    draws = [et.uniform_correct_walk(start, target, rng, length=4) for _ in range(600 * len(answers))]
    assert set(draws) == set(answers)
    for answer in answers:
        assert draws.count(answer) / len(draws) == pytest.approx(1 / len(answers), rel=0.2)
    # the skewed prior, conditioned on success, is not uniform: the test could tell them apart
    prior_rng, prior_hits = random.Random(0), []
    while len(prior_hits) < 600 * len(answers):
        walk = et.sample_walk(start, 4, prior_rng)
        if walk[-1] == target:
            prior_hits.append(walk)
    shares = [prior_hits.count(a) / len(prior_hits) for a in answers]
    assert max(shares) > 1.2 / len(answers)


def test_prior_is_unequal():
    # the SFT prior: successor i with probability EDGE_WEIGHTS[i]; check the frequencies of a long sample
    rng = random.Random(0)
    firsts = [et.GRAPH["a"].index(et.sample_walk("a", 1, rng)) for _ in range(20_000)]
    shares = [firsts.count(i) / len(firsts) for i in range(3)]
    assert shares == pytest.approx(list(et.EDGE_WEIGHTS), abs=0.02)


# ---------------------------------------------------------------------------------------------------------------------
# Statistics helpers
# ---------------------------------------------------------------------------------------------------------------------


def test_distinct_correct_count():
    answers = ["ab", "ab", "cd", "ef", "cd", "gh"]
    correct = [True, True, True, False, False, True]
    assert distinct_correct_count(answers, correct) == 3  # ab, cd, gh ("cd" counts once although once wrong)
    assert distinct_correct_count(answers, [False] * 6) == 0
    with pytest.raises(ValueError):
        distinct_correct_count(answers, correct[:-1])


def test_bootstrap_one_seed_matches_the_normal_interval():
    # one seed: the plain bootstrap over prompts; for 400 uniform values the mean is close to normal, so the
    # percentile interval must be close to mean +- 1.96 sd / sqrt(P) (sd with ddof 0: the bootstrap's plug-in)
    rng = np.random.default_rng(0)
    values = rng.random(400)
    ours = bootstrap_ci([values.tolist()], num_resamples=20_000, seed=1)
    half_width = 1.959964 * values.std() / np.sqrt(len(values))
    assert ours["mean"] == pytest.approx(values.mean(), abs=1e-12)
    assert ours["low"] == pytest.approx(values.mean() - half_width, abs=0.002)
    assert ours["high"] == pytest.approx(values.mean() + half_width, abs=0.002)


def test_bootstrap_two_way_matches_an_independent_loop():
    rng = np.random.default_rng(3)
    seeds, prompts = 5, 30
    table = rng.normal(size=(seeds, 1)) * 0.5 + rng.random((seeds, prompts))  # a seed effect plus prompt noise
    ours = bootstrap_ci(table.tolist(), num_resamples=20_000, seed=0)
    draws = np.random.default_rng(4)
    means = [
        table[np.ix_(draws.integers(seeds, size=seeds), draws.integers(prompts, size=prompts))].mean()
        for _ in range(20_000)
    ]
    low, high = np.quantile(means, [0.025, 0.975])
    assert ours["low"] == pytest.approx(low, abs=0.03) and ours["high"] == pytest.approx(high, abs=0.03)
    # resampling seeds widens the interval compared with resampling prompts only
    prompts_only = bootstrap_ci([table.mean(axis=0).tolist()], num_resamples=5000, seed=0)
    assert ours["high"] - ours["low"] > 2 * (prompts_only["high"] - prompts_only["low"])


def test_bootstrap_limits_and_determinism():
    assert bootstrap_ci([[0.25] * 7] * 3) == {"mean": 0.25, "low": 0.25, "high": 0.25}
    table = [[0.1, 0.5, 0.9], [0.2, 0.4, 1.0]]
    assert bootstrap_ci(table, seed=5) == bootstrap_ci(table, seed=5)
    with pytest.raises(ValueError):
        bootstrap_ci([], num_resamples=10)
    with pytest.raises(ValueError):
        bootstrap_ci(table, confidence=1.0)


# ---------------------------------------------------------------------------------------------------------------------
# The study's smoke run (what CI runs: a few seconds)
# ---------------------------------------------------------------------------------------------------------------------


def load_study():
    spec = importlib.util.spec_from_file_location("explore_study", REPO / "recipes" / "explore_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_study_is_deterministic_and_consistent(tmp_path):
    study = load_study()
    study.main(["--smoke", "--output_dir", str(tmp_path / "first")])  # the CI command: JSON and figures
    for figure in ("explore_reward.png", "explore_pass_at_k.png", "explore_relay.png", "explore_position.png"):
        assert (tmp_path / "first" / figure).read_bytes()[:4] == b"\x89PNG"
    config = dict(
        study.SMOKE,
        relay_ratio=0.5,
        learning_rate=study.TRAINING["learning_rate"],
        output_dir=str(tmp_path / "first"),
    )
    second = study.run_study(dict(config))
    (tmp_path / "second.json").write_text(json.dumps(second))
    # same numbers, to the last digit (timings aside); the comparison itself must see every value
    comparison = study.compare(tmp_path / "first" / "results.json", tmp_path / "second.json")
    assert comparison["differ"] == 0 and comparison["only_in_one"] == 0 and comparison["values"] > 400
    first = json.loads((tmp_path / "first" / "results.json").read_text())
    assert study.compare(tmp_path / "first" / "results.json", tmp_path / "first" / "results.json")["differ"] == 0
    second["runs"][0]["correct"][0] += 1  # the comparison catches a changed number
    (tmp_path / "changed.json").write_text(json.dumps(second))
    assert study.compare(tmp_path / "first" / "results.json", tmp_path / "changed.json")["differ"] == 1

    n, summary = config["eval_samples"], first["summary"]
    assert sum(first["start"][0]["correct"]) > 0  # the smoke start policy finds some walks: not a run of zeros
    assert summary["ks"] == [1, 2, 4, 8]
    assert set(summary["pass_at_k"]) == {"start", *config["settings"]}
    by_name = {r["setting"]: r for r in first["runs"]}
    assert set(by_name) == set(config["settings"]) == {"dapo", "soup_r0.5_T8", "soup_dataset_r0.5_T8"}
    assert all(len(run["reward"]) == config["max_steps"] for run in by_name.values())
    assert all(p == 0.0 for p in by_name["dapo"]["prefix_fraction"])  # T = 1: plain DAPO, never a prefix
    for name in ("soup_r0.5_T8", "soup_dataset_r0.5_T8"):  # T = 8: step 1 refreshes (on-policy), then relay steps
        assert [p > 0 for p in by_name[name]["prefix_fraction"]] == [False, True, True, True]
    # the references are 21-token answers cut at ratio 0.5: floor(21 * 0.5 + 0.5) = 11 prefix tokens per relay row
    assert by_name["soup_dataset_r0.5_T8"]["prefix_fraction"][1:] == pytest.approx([11 / 21] * 3, abs=0.02)
    # pass@k of the summary is the estimator averaged over the (seed, prompt) cells of the correct counts
    for run in first["runs"]:
        assert len(run["correct"]) == len(run["distinct"]) == config["eval_prompts"]
        assert all(0 <= d <= c <= n for c, d in zip(run["correct"], run["distinct"], strict=True))
        for k in range(1, n + 1):
            expected = sum(pass_at_k(n, c, k) for c in run["correct"]) / len(run["correct"])
            assert summary["pass_at_k"][run["setting"]][str(k)]["mean"] == pytest.approx(expected, abs=1e-12)
        relay = summary["relay"][run["setting"]]["start"]["minus_final"]["8"]["mean"]
        expected = sum(
            pass_at_k(n, a, 8) - pass_at_k(n, b, 8)
            for a, b in zip(run["relay_start_correct"], run["correct"], strict=True)
        ) / len(run["correct"])
        assert relay == pytest.approx(expected, abs=1e-12)
    assert "| dapo |" in study.markdown_tables(first)


@pytest.mark.slow
def test_start_policy_finds_some_walks_but_rarely():
    """The property the study needs from its start policy (seed 0, the study's SFT): correct walks for most prompts,
    at a low rate, and all of them different (the solution set is wide at the start)."""
    study = load_study()
    start = study.evaluate_start(0, dict(sft_steps=et.SFT_STEPS, eval_prompts=24, eval_samples=64))
    correct, distinct = start["correct"], start["distinct"]
    assert sum(c > 0 for c in correct) >= 16  # most prompts solved at least once in 64 samples
    assert 0.02 < sum(correct) / (64 * len(correct)) < 0.2  # but rarely
    assert sum(distinct) >= 0.9 * sum(correct)  # and almost never the same walk twice
