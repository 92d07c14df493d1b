"""``python -m trl_soup.serve_behavior``, as in 0.2 and in docs: the command itself is ``trl-soup serve-behavior``
(:mod:`trl_soup.cli.serve_behavior`)."""

from __future__ import annotations

from .cli.serve_behavior import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    main()
