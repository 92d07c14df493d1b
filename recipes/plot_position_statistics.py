"""Plot entropy and clip ratio by relative token position (paper Fig. 5) from trainer_state.json files, run from a
checkout: a thin wrapper over `trl_soup.cli.plot_positions`, which the installed command `trl-soup plot-positions`
runs too.

    python recipes/plot_position_statistics.py RUN/trainer_state.json --output fig5.png
"""

# BINS and position_curves: for code that loads this file (tests/test_plot_position.py)
from trl_soup.cli.plot_positions import BINS, cli_main, position_curves  # noqa: F401

if __name__ == "__main__":
    cli_main(prog="recipes/plot_position_statistics.py")
