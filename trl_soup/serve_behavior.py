"""Start a vLLM server for SOUP's behavior policy, with safe defaults.

    python -m trl_soup.serve_behavior --model Qwen/Qwen2.5-Math-7B [--port 8001] [--enable-lora] [-- EXTRA VLLM ARGS]

- Binds to 127.0.0.1 unless ``--host`` says otherwise: the server runs in vLLM's dev mode, whose endpoints can reload
  weights, and must not face a network.
- Passes the flags SOUP needs: ``VLLM_SERVER_DEV_MODE=1`` (``/collective_rpc``, ``/reset_prefix_cache``),
  ``--logprobs-mode processed_logprobs`` (behavior log-probs after temperature scaling, like TRL's; with sampling
  filters the backend re-scores responses instead, see docs/deviations.md "The prefix denominator"), enough
  ``--max-logprobs`` for the entropy estimate, and with ``--enable-lora`` runtime LoRA loading.
- Any model can be served as it is, tied embeddings included: every refresh writes the output head explicitly
  (see docs/vllm_server.md).
- Prints what to pass to ``SOUPConfig``, then replaces itself with the server process.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser(prog: str = "python -m trl_soup.serve_behavior") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model path or Hub id: the learner's starting model")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8001, help="port (default 8001; TRL's own vLLM server uses 8000)")
    parser.add_argument("--dtype", default="auto", help="vLLM --dtype (use float32 on CPU)")
    parser.add_argument("--max-model-len", type=int, default=None, help="vLLM --max-model-len")
    parser.add_argument("--max-logprobs", type=int, default=64, help="most top log-probs a request may ask for")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM --gpu-memory-utilization")
    parser.add_argument("--enable-lora", action="store_true", help="allow behavior_refresh_method='lora'")
    parser.add_argument("--max-lora-rank", type=int, default=64, help="with --enable-lora: the largest LoRA rank")
    parser.add_argument(
        "--max-loras",
        type=int,
        default=None,
        help="with --enable-lora: LoRA adapters one batch may use (vLLM --max-loras); behavior_pool_size K needs K",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after `--`: more vLLM arguments, passed as they are")
    return parser


def build_command(args, model_dir: str) -> tuple[list[str], dict[str, str]]:
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--dtype",
        args.dtype,
        "--logprobs-mode",
        "processed_logprobs",
        "--max-logprobs",
        str(args.max_logprobs),
    ]
    if args.max_model_len:
        command += ["--max-model-len", str(args.max_model_len)]
    if args.gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    if args.enable_lora:
        command += ["--enable-lora", "--max-lora-rank", str(args.max_lora_rank)]
        if args.max_loras is not None:
            command += ["--max-loras", str(args.max_loras)]
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    extra = [a for a in args.extra if a != "--"]
    return command + extra, env


def cli_main(argv: list[str], prog: str) -> int:
    """`trl-soup serve-behavior`: :func:`main` with the command's name in its usage line."""
    main(argv, prog=prog)
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m trl_soup.serve_behavior") -> None:
    args = build_parser(prog).parse_args(argv)
    if args.host not in LOOPBACK:
        print(
            f"[serve_behavior] WARNING: binding to {args.host}. The dev-mode endpoints of this server can reload its "
            "weights: keep it on a private network.",
            file=sys.stderr,
        )
    command, env = build_command(args, args.model)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(
        f"[serve_behavior] pass to SOUPConfig: behavior_backend='vllm_server', "
        f"behavior_server_base_url='http://{host}:{args.port}'"
        + (", behavior_refresh_method='lora'" if args.enable_lora else ", behavior_refresh_method='disk'")
    )
    print("[serve_behavior] " + " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(command), flush=True)
    if args.dry_run:
        return
    os.execvpe(command[0], command, {**os.environ, **env})


if __name__ == "__main__":
    main()
