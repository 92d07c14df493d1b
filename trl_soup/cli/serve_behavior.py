"""Start a vLLM server for SOUP's behavior policy, with safe defaults.

    python -m trl_soup.serve_behavior --model Qwen/Qwen2.5-Math-7B [--port 8001] [--enable-lora] [-- EXTRA VLLM ARGS]

- Binds to 127.0.0.1 unless ``--host`` says otherwise: the server runs in vLLM's dev mode, whose endpoints can reload
  weights. Any other address needs a token.
- With a token (``TRL_SOUP_SERVER_TOKEN`` in the environment, or ``--token-file PATH``) every route but ``/health``
  requires ``Authorization: Bearer <token>``, dev-mode routes included (``trl_soup.server_auth.TokenAuthMiddleware``,
  loaded with vLLM's ``--middleware``). The token never goes on the command line: the server reads it from its
  environment, or from the file (then only the file's path is passed). ``--ssl-keyfile`` / ``--ssl-certfile`` serve
  TLS (docs/vllm_server.md, "Several nodes").
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

from ..server_auth import MIDDLEWARE, TOKEN_ENV, TOKEN_FILE_ENV, check_server_address, server_token


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
    parser.add_argument(
        "--token-file",
        default=None,
        help=f"file holding the token every route but /health then requires (default: {TOKEN_ENV} from the "
        "environment; needed unless --host is loopback)",
    )
    parser.add_argument("--ssl-keyfile", default=None, help="TLS private key (with --ssl-certfile: serve https)")
    parser.add_argument("--ssl-certfile", default=None, help="TLS certificate (with --ssl-keyfile: serve https)")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after `--`: more vLLM arguments, passed as they are")
    return parser


def token_environment(args, environ) -> dict[str, str]:
    """The server's token variables: ``--token-file`` (its path, as ``TRL_SOUP_SERVER_TOKEN_FILE``), else those of
    ``environ``; empty without a token. Reads the token once to check it (an unreadable file stops here)."""
    env = {name: environ[name] for name in (TOKEN_ENV, TOKEN_FILE_ENV) if environ.get(name)}
    if args.token_file:
        env = {TOKEN_FILE_ENV: os.path.abspath(args.token_file)}
    server_token(env)
    return env


def build_command(args, model_dir: str, authenticated: bool = False) -> tuple[list[str], dict[str, str]]:
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
    if authenticated:
        command += ["--middleware", MIDDLEWARE]
    if args.ssl_keyfile or args.ssl_certfile:
        command += ["--ssl-keyfile", args.ssl_keyfile, "--ssl-certfile", args.ssl_certfile]
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
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        parser.error("--ssl-keyfile and --ssl-certfile go together")
    try:
        token_env = token_environment(args, os.environ)
        scheme = "https" if args.ssl_certfile else "http"
        warning = check_server_address(f"{scheme}://{_url_host(args.host)}:{args.port}", bool(token_env), "--host")
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if warning:
        print(f"[serve_behavior] WARNING: {warning}", file=sys.stderr)
    command, env = build_command(args, args.model, authenticated=bool(token_env))
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(
        f"[serve_behavior] pass to SOUPConfig: behavior_backend='vllm_server', "
        f"behavior_server_base_url='{scheme}://{_url_host(host)}:{args.port}'"
        + (", behavior_refresh_method='lora'" if args.enable_lora else ", behavior_refresh_method='disk'")
        + (f"; and {TOKEN_ENV}=<the token> to the training processes" if token_env else "")
    )
    shown = {**env, **{k: v for k, v in token_env.items() if k != TOKEN_ENV}}  # the token itself is never printed
    print("[serve_behavior] " + " ".join(f"{k}={v}" for k, v in shown.items()) + " " + shlex.join(command), flush=True)
    if args.dry_run:
        return
    inherited = {k: v for k, v in os.environ.items() if k not in (TOKEN_ENV, TOKEN_FILE_ENV)}
    os.execvpe(command[0], command, {**inherited, **token_env, **env})


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    main()
