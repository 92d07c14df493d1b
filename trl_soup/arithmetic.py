"""A real task for a small pretrained model, built locally: arithmetic problems of graded difficulty.

Four kinds, each a short problem with one integer answer, graded by math-verify as every math task of the package
(`trl_soup.rewards.math_is_correct`):

    add    "What is 47 + 38?"                                   two 2-digit numbers
    sub    "What is 83 - 29?"                                   2-digit minus 2-digit, never negative
    mul    "What is 7 * 16?"                                    1-digit times 2-digit
    word   "Tom has 23 apples and buys 14 more. How many ..."   a sentence around an addition or subtraction

Rows have the math recipe's layout (`problem`, `answer`; `kind` says which of the four), so `trl-soup train` and
`trl-soup evaluate` read them like any math data set: `--dataset_name trl-soup/arithmetic` (train split) and
`--benchmarks arithmetic` (test split). The splits come from one seed and never share a problem.
"""

from __future__ import annotations

import random

__all__ = ["DATASET_NAME", "KINDS", "arithmetic_dataset", "arithmetic_rows", "make_problem"]

DATASET_NAME = "trl-soup/arithmetic"
KINDS = ("add", "sub", "mul", "word")
SPLIT_SIZES = {"train": 2048, "test": 256}  # the test split is the held-out problems of the same seed

_NAMES = ("Tom", "Ana", "Lee", "Maya", "Omar", "Sara", "Ivan", "Nia")
_ITEMS = ("apples", "books", "coins", "stickers", "marbles", "pencils", "cards", "shells")


def make_problem(rng: random.Random, kind: str) -> dict:
    """One problem of `kind` (see KINDS) drawn with `rng`: {"problem", "answer", "kind"}."""
    if kind == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return {"problem": f"What is {a} + {b}?", "answer": str(a + b), "kind": kind}
    if kind == "sub":
        a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
        return {"problem": f"What is {a} - {b}?", "answer": str(a - b), "kind": kind}
    if kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(11, 99)
        return {"problem": f"What is {a} * {b}?", "answer": str(a * b), "kind": kind}
    if kind == "word":
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        a, b = rng.randint(12, 60), rng.randint(2, 11)
        if rng.random() < 0.5:
            text = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
            return {"problem": text, "answer": str(a + b), "kind": kind}
        text = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?"
        return {"problem": text, "answer": str(a - b), "kind": kind}
    raise ValueError(f"Unknown arithmetic kind {kind!r}. Allowed values: {list(KINDS)}.")


def arithmetic_rows(split: str = "train", seed: int = 0, size: int | None = None) -> list[dict]:
    """The rows of one split: kinds in turn (add, sub, mul, word, add, ...), problems unique across both splits.

    The test split (256 problems) is drawn first from `seed`, then the train split from the same stream without any
    test problem, so that `size` changes neither split's first rows.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"Unknown split {split!r} of {DATASET_NAME}. Allowed values: {sorted(SPLIT_SIZES)}.")
    size = SPLIT_SIZES[split] if size is None else size
    if split == "test" and not 1 <= size <= SPLIT_SIZES["test"]:
        raise ValueError(f"size={size!r} is invalid for the test split: it must be from 1 to {SPLIT_SIZES['test']}.")
    if size < 1:
        raise ValueError(f"size={size!r} is invalid: it must be an integer >= 1.")
    rng = random.Random(f"{DATASET_NAME}:{seed}")
    seen: set[str] = set()

    def draw(count: int) -> list[dict]:
        rows: list[dict] = []
        for _ in range(100 * count):  # bounded: the kinds hold ~700 (mul) to ~8000 (add) distinct problems each
            row = make_problem(rng, KINDS[len(rows) % len(KINDS)])
            if row["problem"] not in seen:
                seen.add(row["problem"])
                rows.append(row)
                if len(rows) == count:
                    return rows
        raise ValueError(f"size={count} is more than {DATASET_NAME} holds distinct problems of every kind.")

    test = draw(SPLIT_SIZES["test"])
    return test[:size] if split == "test" else draw(size)


def arithmetic_dataset(split: str = "train", seed: int = 0, size: int | None = None):
    """`arithmetic_rows` as a `datasets.Dataset` (columns problem, answer, kind)."""
    from datasets import Dataset

    return Dataset.from_list(arithmetic_rows(split, seed, size))
