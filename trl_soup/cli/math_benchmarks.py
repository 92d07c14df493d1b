"""Benchmarks, prompts and the pass@k plot of `trl-soup evaluate` (`trl_soup.cli.evaluate`; recipe code: the library
keeps the metrics, the generators and relay inference, in `trl_soup.evaluation`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BENCHMARKS", "DEFAULT_PROMPT_TEMPLATE", "Benchmark", "build_prompt_ids", "load_problems", "plot_pass_at_k"]


@dataclass(frozen=True)
class Benchmark:
    """Where a math benchmark lives on the Hugging Face Hub and which columns hold the problem and the answer."""

    dataset: str
    split: str
    problem_column: str
    answer_column: str
    config: str | None = None
    prompt_template: str | None = None  # None: --prompt_template (DEFAULT_PROMPT_TEMPLATE unless given)


BENCHMARKS: dict[str, Benchmark] = {
    # The paper's six benchmarks (Sec. 4). Row counts: 500, 30, 30, 40, 272, 674.
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
    "aime24": Benchmark("HuggingFaceH4/aime_2024", "train", "problem", "answer"),
    "aime25": Benchmark("math-ai/aime25", "test", "problem", "answer"),
    "amc23": Benchmark("math-ai/amc23", "test", "question", "answer"),
    "minerva": Benchmark("math-ai/minervamath", "test", "question", "answer"),
    "olympiadbench": Benchmark("math-ai/olympiadbench", "test", "question", "final_answer"),
    # Built locally, no download: the held-out split of the arithmetic task for small models (trl_soup.arithmetic).
    # The bare question, as the training prompts of trl-soup/arithmetic (trl_soup.cli.train.DATASET_FORMATS).
    "arithmetic": Benchmark("trl-soup/arithmetic", "test", "problem", "answer", prompt_template="{problem}"),
}

DEFAULT_PROMPT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."


def _answer_text(answer) -> str:
    """A reference answer as text: lists (OlympiadBench's ``final_answer``) joined by ", ", 27.0 written 27."""
    if isinstance(answer, (list, tuple)):
        return ", ".join(_answer_text(a) for a in answer)
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer))
    return str(answer).strip()


def _load_local(dataset_path: str):
    """The rows of a local ``.json`` / ``.jsonl`` / ``.parquet`` file or of a ``save_to_disk`` folder (its first split
    when it holds several)."""
    import datasets

    if os.path.isdir(dataset_path):
        data = datasets.load_from_disk(dataset_path)
        return data[next(iter(data))] if isinstance(data, datasets.DatasetDict) else data
    suffix = dataset_path.rsplit(".", 1)[-1].lower()
    builder = {"json": "json", "jsonl": "json", "parquet": "parquet"}.get(suffix)
    if builder is None:
        raise ValueError(
            f"dataset_path must be a .json, .jsonl or .parquet file or a save_to_disk folder, got {dataset_path!r}"
        )
    return datasets.load_dataset(builder, data_files=dataset_path, split="train")


def _load_benchmark(benchmark: str | None):
    """The rows of a registered benchmark: built locally (arithmetic) or loaded from the Hub."""
    import datasets

    from trl_soup import arithmetic

    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {sorted(BENCHMARKS)}, got {benchmark!r}")
    spec = BENCHMARKS[benchmark]
    if spec.dataset == arithmetic.DATASET_NAME:
        return arithmetic.arithmetic_dataset(spec.split)
    return datasets.load_dataset(spec.dataset, spec.config, split=spec.split)


def load_problems(
    benchmark: str | None = None,
    *,
    dataset_path: str | None = None,
    max_problems: int | None = None,
    problem_column: str = "problem",
    answer_column: str = "answer",
) -> tuple[list[str], list[str]]:
    """``(problems, answers)`` of a registered benchmark (Hub) or of a local file / ``save_to_disk`` folder.

    Args:
        benchmark: a key of `BENCHMARKS` (ignored when ``dataset_path`` is given).
        dataset_path: a local ``.json`` / ``.jsonl`` / ``.parquet`` file or a ``datasets.save_to_disk`` folder.
        max_problems: keep the first ``max_problems`` rows.
        problem_column, answer_column: the columns of a local data set.
    """
    if dataset_path is not None:
        data = _load_local(dataset_path)
    else:
        data = _load_benchmark(benchmark)
        spec = BENCHMARKS[benchmark]
        problem_column, answer_column = spec.problem_column, spec.answer_column
    missing = [c for c in (problem_column, answer_column) if c not in data.column_names]
    if missing:
        raise ValueError(f"the data set has no column {missing}; its columns are {data.column_names}")
    if max_problems is not None:
        data = data.select(range(min(max_problems, len(data))))
    return [str(p) for p in data[problem_column]], [_answer_text(a) for a in data[answer_column]]


def build_prompt_ids(
    tokenizer, problems: Sequence[str], template: str = DEFAULT_PROMPT_TEMPLATE, chat_template: bool | None = None
) -> list[list[int]]:
    """Token ids of each problem put into ``template`` (``{problem}`` is replaced; other braces are kept as written).

    With a chat template (default: when the tokenizer has one) the filled template is the user message and the
    generation prompt is appended; otherwise the text is tokenised as is, without special tokens.
    """
    if "{problem}" not in template:
        raise ValueError(f"prompt_template must contain '{{problem}}', got {template!r}")
    use_chat = getattr(tokenizer, "chat_template", None) is not None if chat_template is None else chat_template
    out = []
    for problem in problems:
        text = template.replace("{problem}", problem)  # not str.format: "\\boxed{}" holds braces
        if use_chat:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(list(ids))
    return out


def plot_pass_at_k(curves: dict[str, dict[int, float]], path: str, title: str = "pass@k") -> None:
    """pass@k against k on a log2 axis, one line per benchmark (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ks = sorted(curve)
        axis.plot(ks, [100 * curve[k] for k in ks], marker="o", markersize=3, label=name)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("k")
    axis.set_ylabel("pass@k (%)")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
