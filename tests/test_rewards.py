"""trl_soup.rewards: math-verify answer checking, as used by the recipes' reward and the evaluation."""

from __future__ import annotations

import pytest

from trl_soup.rewards import completion_text, math_accuracy_reward, math_is_correct


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        (r"so the answer is \boxed{\frac{2}{6}}", r"\frac{1}{3}", True),  # symbolic equality, not string equality
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{3}", False),
        (r"first 12, finally \boxed{13}", "13", True),  # the boxed answer wins over other numbers
        (r"\boxed{12} is wrong, it is 13", "13", False),  # first boxed match is the answer
        ("The answer is 34", "34", True),  # no LaTeX: plain extraction
        (r"\boxed{2\sqrt{3}}", r"2\sqrt{3}", True),
        ("no number at all", "34", False),
    ],
)
def test_math_is_correct(response, gold, expected):
    assert math_is_correct(response, gold) is expected


def test_reward_standard_and_conversational():
    completions = [r"\boxed{34}", [{"role": "assistant", "content": r"\boxed{35}"}], "34"]
    assert math_accuracy_reward(completions, solution=["34", "34", "34"]) == [1.0, 0.0, 1.0]


def test_reward_lengths_must_match():
    with pytest.raises(ValueError):
        math_accuracy_reward([r"\boxed{1}"], solution=["1", "2"])


def test_completion_text_rejects_other_types():
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    with pytest.raises(TypeError, match="string or a list of messages"):
        completion_text(42)
