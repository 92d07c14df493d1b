"""The configs that ship inside the package: the paper's training YAMLs and the accelerate configs, by name.

    trl-soup configs                      # list both kinds, with their paths
    trl-soup configs --path zero3         # print one file's path (a training config or an accelerate config)

A name is a file stem (`qwen2.5-math-7b_dapo-math-17k_soup`, `zero3`), with or without `.yaml`. `trl-soup train
--config NAME` and `--accelerate_config NAME` take the same names; a path to an existing file is used as it is.
"""

from __future__ import annotations

import argparse
import os
from importlib import resources
from pathlib import Path

KINDS = {"training": "configs", "accelerate": "accelerate_configs"}


def config_dir(kind: str) -> Path:
    """The packaged folder of one kind ("training" or "accelerate")."""
    return Path(str(resources.files("trl_soup.cli").joinpath(KINDS[kind])))


def config_names(kind: str) -> list[str]:
    return sorted(path.stem for path in config_dir(kind).glob("*.yaml"))


def resolve_config(value: str, kind: str) -> str:
    """`value` itself when it is an existing file, else the packaged config of that name; a ValueError lists the
    names otherwise."""
    if os.path.isfile(value):
        return value
    name = value[: -len(".yaml")] if value.endswith(".yaml") else value
    candidate = config_dir(kind) / f"{name}.yaml"
    if os.sep not in name and candidate.is_file():
        return str(candidate)
    flag = "--config" if kind == "training" else "--accelerate_config"
    raise ValueError(
        f"{flag} {value!r} is neither a file nor a packaged {kind} config. Packaged: "
        f"{', '.join(config_names(kind))} (`trl-soup configs` lists them with their paths)."
    )


def pop_option(argv: list[str], flag: str) -> tuple[str | None, list[str]]:
    """The value of `flag VALUE` or `flag=VALUE` in argv (the first one) and argv without it."""
    for i, token in enumerate(argv):
        if token == flag:
            if i + 1 >= len(argv):
                raise ValueError(f"{flag} needs a value.")
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1], argv[:i] + argv[i + 1 :]
    return None, argv


def resolve_config_argument(argv: list[str]) -> list[str]:
    """argv with a packaged config name after `--config` replaced by the file's path."""
    value, rest = pop_option(argv, "--config")
    return argv if value is None else ["--config", resolve_config(value, "training"), *rest]


def cli_main(argv: list[str] | None = None, prog: str = "trl-soup configs") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", metavar="NAME", help="print the path of this packaged config and nothing else")
    args = parser.parse_args(argv)
    if args.path is not None:
        for kind in KINDS:
            try:
                print(resolve_config(args.path, kind))
                return 0
            except ValueError:
                continue
        parser.error(
            f"{args.path!r} is not a packaged config. Training: {', '.join(config_names('training'))}; "
            f"accelerate: {', '.join(config_names('accelerate'))}."
        )
    for kind, flag in (("training", "trl-soup train --config"), ("accelerate", "--accelerate_config")):
        print(f"{kind} configs ({flag} NAME), in {config_dir(kind)}:")
        for name in config_names(kind):
            print(f"  {name}")
    return 0
