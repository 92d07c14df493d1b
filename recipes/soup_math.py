"""The paper's math recipe (SOUP or the GRPO/DAPO baseline), run from a checkout: a thin wrapper over
`trl_soup.cli.train`, which the installed command `trl-soup train` runs too (its docstring has the launch lines).

    python recipes/soup_math.py --config recipes/configs/r1-distill-qwen-1.5b_openr1-math-46k_soup.yaml
    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml recipes/soup_math.py \
        --config qwen2.5-math-7b_dapo-math-17k_soup
"""

from trl_soup.cli.train import *  # noqa: F403 (the recipe's names, for code that loads this file)
from trl_soup.cli.train import cli_main

if __name__ == "__main__":
    cli_main(prog="recipes/soup_math.py")
