"""`python -m trl_soup.cli ...` (and `accelerate launch -m trl_soup.cli train ...`): the `trl-soup` command."""

import sys

from trl_soup.cli.main import main

sys.exit(main())
