"""Evaluate a checkpoint on math benchmarks (avg@n, pass@k, optional relay inference), run from a checkout: a thin
wrapper over `trl_soup.cli.evaluate`, which the installed command `trl-soup evaluate` runs too.

    python recipes/evaluate.py --model_name_or_path outputs/soup/checkpoint-500 --num_samples 32
"""

from trl_soup.cli.evaluate import cli_main

if __name__ == "__main__":
    cli_main(prog="recipes/evaluate.py")
