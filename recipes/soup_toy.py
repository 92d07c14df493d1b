"""SOUP on the embedded default (tiny local model, synthetic "copy the digits" task, CPU), run from a checkout: a thin
wrapper over `trl_soup.cli.toy`, which `bash scripts/demo.sh` and the installed command `trl-soup toy` run too.

    python recipes/soup_toy.py [--compare_grpo] [--any_soup_config_field value ...]
"""

from trl_soup.cli.toy import *  # noqa: F403 (the recipe's names, for code that loads this file)
from trl_soup.cli.toy import cli_main

if __name__ == "__main__":
    cli_main(prog="recipes/soup_toy.py")
