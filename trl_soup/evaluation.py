"""Evaluation: pass@k / avg@n over sampled answers, and relay ("SOUP") inference with two checkpoints.

Metrics (paper Sec. 4 reports avg@32; Sec. 5.1 compares pass@k curves):

    avg@n   = 1/P sum_p c_p / n                                  mean accuracy of the n samples per problem
    pass@k  = 1/P sum_p [1 - C(n - c_p, k) / C(n, k)]            unbiased estimator (Chen et al. 2021, Eq. 1)

where problem p has n samples of which c_p are correct. avg@n equals pass@1.

Relay inference (paper Sec. 5.1, "SOUP inference"): an earlier checkpoint (the *prefix model*) samples a full
response, the response is cut to its first ``round(len * prefix_ratio)`` tokens (ratio truncation, Sec. 3.3), and a
later checkpoint (the *continuation model*) continues from ``[prompt, prefix]`` token ids with the remaining budget
``max_new_tokens - len(prefix)``. A prefix that already ends with EOS, or leaves no budget, is final -- the same rule
as relay sampling in training. Token ids are kept end to end: nothing is decoded and re-tokenised at the cut.

Generation goes through a small interface, `Generator`, with two implementations: `TransformersGenerator`
(``model.generate``) and `VLLMGenerator` (vLLM's offline ``LLM`` engine with token-id prompts).

Benchmark tables, prompt templates and the pass@k plot are command-line code: ``trl_soup/cli/math_benchmarks.py``,
used by ``trl-soup evaluate`` (``trl_soup/cli/evaluate.py``). The studies' statistics (distinct correct answers, the
seed x problem bootstrap) are study code: ``recipes/study_stats.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .core import continuation_budgets, truncate_by_ratio

__all__ = [
    "BACKENDS",
    "Generator",
    "RelayPlan",
    "TransformersGenerator",
    "VLLMGenerator",
    "avg_at_k",
    "build_generator",
    "correctness_summary",
    "pass_at_k",
    "plan_relay",
    "relay_generate",
    "resolve_backend",
]

BACKENDS = ("auto", "transformers", "vllm")

# ---------------------------------------------------------------------------------------------------------------------
# Metrics (pure)
# ---------------------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them correct (Chen et al. 2021, Eq. 1).

    ``pass@k = 1 - C(n - c, k) / C(n, k)``: the probability that a uniformly random subset of ``k`` of the ``n``
    samples holds at least one correct answer. Computed in product form,
    ``C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)``, which never forms the huge binomials.

    Args:
        n: samples drawn for the problem (``n >= 1``).
        c: correct samples among them (``0 <= c <= n``).
        k: subset size (``1 <= k <= n``).

    Returns:
        A float in ``[0, 1]``; exactly 1.0 when ``n - c < k`` (every k-subset holds a correct sample) and exactly 0.0
        when ``c == 0``.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name} must be an int, got {value!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n must be >= 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be in [0, n] = [0, {n}], got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n] = [1, {n}], got k={k}")
    if n - c < k:
        return 1.0
    if c == 0:
        return 0.0
    # 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _check_matrix(correctness: Sequence[Sequence[bool]]) -> int:
    """The common number of samples per problem of a correctness matrix (ValueError if ragged or empty)."""
    if len(correctness) == 0:
        raise ValueError("correctness must hold at least one problem")
    sizes = {len(row) for row in correctness}
    if len(sizes) != 1:
        raise ValueError(f"every problem must have the same number of samples, got sizes {sorted(sizes)}")
    n = sizes.pop()
    if n < 1:
        raise ValueError("every problem must have at least one sample")
    return n


def avg_at_k(correctness: Sequence[Sequence[bool]]) -> float:
    """avg@n: the accuracy of the samples, averaged over samples then problems (the paper's avg@32, Sec. 4).

    Args:
        correctness: one row per problem, ``n`` booleans per row (sample j of problem p is correct).

    Returns:
        ``1/P sum_p c_p / n``; equal to pass@1.
    """
    n = _check_matrix(correctness)
    return sum(sum(bool(x) for x in row) / n for row in correctness) / len(correctness)


def correctness_summary(correctness: Sequence[Sequence[bool]], ks: Sequence[int] | None = None) -> dict:
    """avg@n and pass@k averaged over problems, from a per-problem correctness matrix.

    Args:
        correctness: one row per problem, ``n`` booleans per row.
        ks: the k values (each in ``[1, n]``); default ``1..n``.

    Returns:
        ``{"num_problems": P, "num_samples": n, "avg@n": float, "pass@k": {k: float}, "correct_counts": [c_p]}``.
    """
    n = _check_matrix(correctness)
    ks = list(range(1, n + 1)) if ks is None else [int(k) for k in ks]
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"ks must lie in [1, n] = [1, {n}], got {bad}")
    counts = [sum(bool(x) for x in row) for row in correctness]
    return {
        "num_problems": len(correctness),
        "num_samples": n,
        "avg@n": avg_at_k(correctness),
        "pass@k": {k: sum(pass_at_k(n, c, k) for c in counts) / len(counts) for k in ks},
        "correct_counts": counts,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Generation interface
# ---------------------------------------------------------------------------------------------------------------------


@runtime_checkable
class Generator(Protocol):
    """Samples continuations of token-id prompts. Sampling settings (temperature, top_p) belong to the generator.

    ``generate(prompt_ids, max_new_tokens, n, seed)`` returns ``len(prompt_ids) * n`` token-id lists, grouped by
    prompt (row ``i * n + j`` is sample ``j`` of prompt ``i``). Each list stops at the first EOS (included) or at the
    budget. ``max_new_tokens`` is one budget for all prompts or one per prompt (0 gives an empty list).
    """

    def generate(
        self, prompt_ids: list[list[int]], max_new_tokens: int | list[int], n: int = 1, seed: int = 0
    ) -> list[list[int]]: ...


def _budgets(prompt_ids: list[list[int]], max_new_tokens: int | list[int]) -> list[int]:
    budgets = [max_new_tokens] * len(prompt_ids) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompt_ids):
        raise ValueError(f"max_new_tokens: got {len(budgets)} budgets for {len(prompt_ids)} prompts")
    if any(b < 0 for b in budgets):
        raise ValueError(f"max_new_tokens must be >= 0, got {min(budgets)}")
    return budgets


def _cut_at_eos(ids: list[int], eos_token_ids: set[int], budget: int) -> list[int]:
    """The first ``budget`` tokens of ``ids``, stopped after the first EOS."""
    ids = ids[:budget]
    for position, token in enumerate(ids):
        if token in eos_token_ids:
            return ids[: position + 1]
    return ids


class TransformersGenerator:
    """`Generator` on a transformers causal LM (``model.generate``; left-padded batches, sampling or greedy).

    Per-row budgets: a batch is generated up to its largest budget and each row is cut to its own (decoding is
    autoregressive, so the first b tokens are what a run with budget b would produce, given the same random draws).

    Args:
        model: a causal LM, or a path / Hub id loaded with ``AutoModelForCausalLM``.
        pad_token_id: the padding id (the tokenizer's ``pad_token_id``, or its EOS when it has none).
        eos_token_ids: the ids that end a response (default: the model's generation config).
        temperature: sampling temperature; 0 means greedy decoding.
        top_p: nucleus sampling threshold (1.0 = off).
        batch_size: prompts rows per ``generate`` call.
    """

    def __init__(
        self,
        model,
        *,
        pad_token_id: int,
        eos_token_ids: Sequence[int] | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 64,
        dtype: str = "auto",
    ):
        if isinstance(model, str):
            from transformers import AutoModelForCausalLM

            device = "cuda" if torch.cuda.is_available() else "cpu"
            model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device)
        self.model = model.eval()
        if eos_token_ids is None:
            eos = model.generation_config.eos_token_id
            eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_token_ids = set(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens, n=1, seed=0):
        budgets = _budgets(prompt_ids, max_new_tokens)
        rows = [(ids, b) for ids, b in zip(prompt_ids, budgets, strict=True) for _ in range(n)]
        device = next(self.model.parameters()).device
        # Every sampling knob is explicit: a checkpoint's generation_config (top_k=20, repetition_penalty=1.05, ...)
        # must not change what is evaluated, and vLLM's SamplingParams below starts from the same neutral values.
        sampling = (
            dict(do_sample=True, temperature=self.temperature, top_p=self.top_p)
            if self.temperature > 0
            else dict(do_sample=False)
        )
        sampling.update(top_k=0, repetition_penalty=1.0)
        out: list[list[int]] = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                width = max(len(ids) for ids, _ in batch)
                input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (ids, _) in enumerate(batch):  # left padding
                    input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, width - len(ids) :] = 1
                budget = max(b for _, b in batch)
                if budget == 0:
                    out.extend([] for _ in batch)
                    continue
                generated = self.model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=budget,
                    min_new_tokens=0,
                    pad_token_id=self.pad_token_id,
                    eos_token_id=sorted(self.eos_token_ids),
                    **sampling,
                )[:, width:].tolist()
                out.extend(
                    _cut_at_eos(ids, self.eos_token_ids, b) for ids, (_, b) in zip(generated, batch, strict=True)
                )
        return out

    def close(self) -> None:
        """Drop this generator's reference to the model (relay loads the second checkpoint after the first)."""
        _free_memory(self, "model")


class VLLMGenerator:
    """`Generator` on vLLM's offline engine: token-id prompts (``TokensPrompt``), one ``SamplingParams`` per prompt.

    Sample ``j`` of prompt ``i`` is its own request with seed ``seed + i * n + j``, so results do not depend on how
    vLLM batches requests. On vLLM's CPU build chunked prefill is turned off (unless ``enable_chunked_prefill`` is
    given): a seeded request whose prefill is split makes its engine die ("CPU Generator does not use offset", vllm
    0.32 rewinds the request's generator, which CPU generators cannot do). EOS handling is vLLM's (stop at the model's
    EOS ids, EOS kept in ``token_ids``).

    Args:
        model: a path or Hub id.
        temperature: sampling temperature; 0 means greedy decoding.
        top_p: nucleus sampling threshold.
        **llm_kwargs: passed to ``vllm.LLM`` (e.g. ``dtype``, ``gpu_memory_utilization``, ``max_model_len``,
            ``tensor_parallel_size``, ``enforce_eager``).
    """

    def __init__(self, model: str, *, temperature: float = 1.0, top_p: float = 1.0, **llm_kwargs):
        from vllm import LLM
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        self.llm = LLM(model=model, **llm_kwargs)
        self.temperature = temperature
        self.top_p = top_p

    def generate(self, prompt_ids, max_new_tokens, n=1, seed=0):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        budgets = _budgets(prompt_ids, max_new_tokens)
        # One request per (prompt, sample) with n=1: greedy decoding refuses n > 1, and a seed per row makes the
        # result independent of vLLM's batching. vLLM refuses max_tokens=0, so such rows stay empty.
        rows = [(i * n + j, i) for i in range(len(prompt_ids)) for j in range(n) if budgets[i] > 0]
        params = [
            SamplingParams(n=1, temperature=self.temperature, top_p=self.top_p, max_tokens=budgets[i], seed=seed + row)
            for row, i in rows
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(prompt_ids[i])) for _, i in rows]
        results = self.llm.generate(prompts, params, use_tqdm=False) if rows else []
        out: list[list[int]] = [[] for _ in range(len(prompt_ids) * n)]
        for (row, _), result in zip(rows, results, strict=True):
            out[row] = list(result.outputs[0].token_ids)
        return out

    def close(self) -> None:
        """Free the engine (a second engine, e.g. the continuation model, can then take the accelerator's memory)."""
        _free_memory(self, "llm")


def _free_memory(owner, attribute: str) -> None:
    import gc

    setattr(owner, attribute, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"vllm"`` when vLLM is importable and a CUDA GPU is present, else ``"transformers"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "transformers"


def build_generator(
    backend: str,
    model: str,
    *,
    pad_token_id: int,
    temperature: float,
    top_p: float,
    batch_size: int = 64,
    dtype: str = "auto",
    vllm_kwargs: dict | None = None,
) -> Generator:
    """A `Generator` for a model path on ``backend`` ("auto", "transformers" or "vllm")."""
    backend = resolve_backend(backend)
    if backend == "vllm":
        return VLLMGenerator(model, temperature=temperature, top_p=top_p, dtype=dtype, **(vllm_kwargs or {}))
    return TransformersGenerator(
        model, pad_token_id=pad_token_id, temperature=temperature, top_p=top_p, batch_size=batch_size, dtype=dtype
    )


# ---------------------------------------------------------------------------------------------------------------------
# Relay ("SOUP") inference, paper Sec. 5.1
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RelayPlan:
    """Where each prefix-model response is cut and what the continuation model is asked to write.

    Attributes:
        prefixes: ``prefix_ids`` per row (the first ``prefix_length`` tokens of the prefix model's response).
        continuation_prompt_ids: ``prompt + prefix`` per row.
        budgets: continuation budget per row, ``max_new_tokens - len(prefix)``; 0 when the prefix is final.
    """

    prefixes: list[list[int]]
    continuation_prompt_ids: list[list[int]]
    budgets: list[int]


def plan_relay(
    prompt_ids: list[list[int]],
    responses: list[list[int]],
    n: int,
    prefix_ratio: float,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
) -> RelayPlan:
    """Cut the prefix model's responses by ratio (paper Sec. 3.3) and set up the continuation requests.

    Args:
        prompt_ids: the P prompts.
        responses: ``P * n`` prefix-model responses grouped by prompt (as `Generator.generate` returns them).
        n: samples per prompt.
        prefix_ratio: fraction of each response kept, ``floor(len * ratio + 0.5)`` tokens (`truncate_by_ratio`).
        max_new_tokens: the response budget; the continuation gets what the prefix leaves.
        eos_token_ids: a prefix ending with one of these is final (no continuation), as in training.
    """
    if len(responses) != len(prompt_ids) * n:
        raise ValueError(
            f"expected {len(prompt_ids) * n} responses ({len(prompt_ids)} prompts x n={n}), got {len(responses)}"
        )
    if not 0.0 <= prefix_ratio <= 1.0:
        raise ValueError(f"prefix_ratio must be in [0, 1], got {prefix_ratio}")
    eos = set(eos_token_ids)
    response_lengths = torch.tensor([len(r) for r in responses], dtype=torch.long)
    lengths = truncate_by_ratio(response_lengths, prefix_ratio)
    ended_with_eos = torch.tensor([bool(r) and r[-1] in eos for r in responses])
    budgets, _ = continuation_budgets(lengths, response_lengths, ended_with_eos, max_new_tokens)  # as in training
    prefixes = [response[:length] for response, length in zip(responses, lengths.tolist(), strict=True)]
    continuation_prompts = [list(prompt_ids[row // n]) + prefix for row, prefix in enumerate(prefixes)]
    return RelayPlan(prefixes, continuation_prompts, budgets.tolist())


def relay_generate(
    prefix_generator: Generator | None,
    continuation_generator: Generator,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    n: int,
    prefix_ratio: float,
    eos_token_ids: Sequence[int],
    seed: int = 0,
    *,
    prefix_responses: list[list[int]] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Relay inference: the prefix model writes, the response is cut, the continuation model finishes it.

    Args:
        prefix_generator: the prefix model; it samples ``n`` full responses per prompt with ``seed``.
        continuation_generator: the continuation model; it continues each ``[prompt, prefix]`` with ``seed + 1``.
        prefix_responses: the prefix model's ``P * n`` full responses, when they are already sampled (with
            ``prefix_generator.generate(prompt_ids, max_new_tokens, n=n, seed=seed)``); ``prefix_generator`` is then
            not called and may be None. Lets a caller free the prefix model before it loads the continuation model.

    Returns:
        ``(responses, prefix_lengths)``: ``P * n`` responses grouped by prompt, each ``prefix + continuation``, and
        the number of prefix-model tokens at the start of each.
    """
    if prefix_responses is None:
        if prefix_generator is None:
            raise ValueError("relay_generate: pass a prefix_generator, or the prefix model's responses")
        prefix_responses = prefix_generator.generate(prompt_ids, max_new_tokens, n=n, seed=seed)
    plan = plan_relay(prompt_ids, prefix_responses, n, prefix_ratio, max_new_tokens, eos_token_ids)
    # A different seed for the second stage, so its random draws are not a replay of the first stage's.
    continuations = continuation_generator.generate(plan.continuation_prompt_ids, plan.budgets, n=1, seed=seed + 1)
    responses = [p + c for p, c in zip(plan.prefixes, continuations, strict=True)]
    return responses, [len(p) for p in plan.prefixes]
