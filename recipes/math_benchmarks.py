"""The benchmarks, prompts and pass@k plot of the evaluation recipe: a thin wrapper over
`trl_soup.cli.math_benchmarks` (kept so that `import math_benchmarks` from recipes/ still works)."""

from trl_soup.cli.math_benchmarks import *  # noqa: F403
from trl_soup.cli.math_benchmarks import __all__  # noqa: F401
