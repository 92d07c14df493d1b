"""The `trl-soup` command line: `trl-soup train | toy | evaluate | plot-positions | serve-behavior | configs`."""

from .main import main

__all__ = ["main"]
