"""trl_soup.arithmetic: the real-model task (splits, answers, determinism) and how the recipes read it."""

from __future__ import annotations

import random
import re

import pytest

from trl_soup.arithmetic import DATASET_NAME, KINDS, SPLIT_SIZES, arithmetic_rows, make_problem


def _independent_answer(row: dict) -> int:
    """The answer read back from the problem's text alone."""
    numbers = [int(x) for x in re.findall(r"\d+", row["problem"])]
    if row["kind"] != "word":
        op = re.search(r"\d+ ([-+*]) \d+", row["problem"]).group(1)
        return {"+": numbers[0] + numbers[1], "-": numbers[0] - numbers[1], "*": numbers[0] * numbers[1]}[op]
    return numbers[0] + numbers[1] if "more" in row["problem"] else numbers[0] - numbers[1]


def test_answers_are_right_and_kinds_take_turns():
    rows = arithmetic_rows("train", seed=3, size=400)
    assert [r["kind"] for r in rows[:8]] == list(KINDS) * 2
    for row in rows:
        assert int(row["answer"]) == _independent_answer(row), row
        assert int(row["answer"]) >= 0
    assert {r["kind"] for r in rows} == set(KINDS)


def test_splits_are_disjoint_deterministic_and_seeded():
    train, test = arithmetic_rows("train"), arithmetic_rows("test")
    assert (len(train), len(test)) == (SPLIT_SIZES["train"], SPLIT_SIZES["test"])
    problems = [r["problem"] for r in train + test]
    assert len(set(problems)) == len(problems)  # unique within and across the splits
    assert arithmetic_rows("train") == train and arithmetic_rows("test") == test
    assert arithmetic_rows("test", seed=1) != test
    # A smaller size is a head of the same split; the test split does not depend on the train size.
    assert arithmetic_rows("train", size=50) == train[:50]
    assert arithmetic_rows("test", size=10) == test[:10]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: arithmetic_rows("validation"), r"Unknown split 'validation'.*\['test', 'train'\]"),
        (lambda: arithmetic_rows("train", size=0), "size=0 is invalid"),
        (
            lambda: arithmetic_rows("test", size=257),
            "size=257 is invalid for the test split: it must be from 1 to 256",
        ),
        (lambda: make_problem(random.Random(0), "div"), r"Unknown arithmetic kind 'div'.*'add', 'sub', 'mul', 'word'"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_reference_answers_grade_with_math_verify():
    from trl_soup.rewards import math_accuracy_reward

    rows = arithmetic_rows("test", size=8)
    right = [f"The answer is {r['answer']}." for r in rows]
    wrong = [f"The answer is {int(r['answer']) + 1}." for r in rows]
    solutions = [r["answer"] for r in rows]
    assert math_accuracy_reward(right, solutions) == [1.0] * 8
    assert math_accuracy_reward(wrong, solutions) == [0.0] * 8


def test_train_recipe_reads_the_task_with_the_bare_question(tmp_path):
    from trl_soup.cli.train import MathScriptArguments, load_raw_dataset, prepare_dataset, resolve_format

    script_args = MathScriptArguments(dataset_name=DATASET_NAME)
    raw = load_raw_dataset(script_args, resolve_format(script_args))
    prepared = prepare_dataset(raw, script_args, conversational=True)
    first = arithmetic_rows("train", size=1)[0]
    assert prepared[0] == {"prompt": [{"role": "user", "content": first["problem"]}], "solution": first["answer"]}
    assert len(prepared) == SPLIT_SIZES["train"]


def test_evaluate_benchmark_is_the_test_split():
    from trl_soup.cli.math_benchmarks import BENCHMARKS, load_problems

    problems, answers = load_problems("arithmetic", max_problems=20)
    test = arithmetic_rows("test", size=20)
    assert problems == [r["problem"] for r in test] and answers == [r["answer"] for r in test]
    assert BENCHMARKS["arithmetic"].prompt_template == "{problem}"


def test_a_size_beyond_the_distinct_problems_is_refused():
    with pytest.raises(ValueError, match="size=5000 is more than trl-soup/arithmetic holds distinct problems"):
        arithmetic_rows("train", size=5000)


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("True", True), ("false", None), (None, None), ("out/checkpoint-4", "out/checkpoint-4")],
)
def test_resume_from_checkpoint_true_means_the_last_checkpoint(value, expected):
    """The real-model configs say `--resume_from_checkpoint true`: the parser gives the string "true", which
    Trainer.train would take for a checkpoint path."""
    from trl_soup.cli.train import resume_argument

    assert resume_argument(value) == expected
