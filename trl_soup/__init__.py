"""trl_soup: SOUP (Single-sample Mix-policy Unified Paradigm, arXiv 2601.21476) for Hugging Face TRL."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names load on first use (PEP 562), so that `import trl_soup` (the `trl-soup` command, its `--help`)
# does not import TRL, transformers and torch until a command needs them.
_EXPORTS = {
    "SOUPConfig": "trl_soup.config",
    "SOUPTrainer": "trl_soup.trainer",
    "available_prefix_strategies": "trl_soup.truncation",
    "register_prefix_strategy": "trl_soup.truncation",
    "available_pool_samplings": "trl_soup.pool",
    "register_pool_sampling": "trl_soup.pool",
    "available_prefix_sources": "trl_soup.sources",
    "register_prefix_source": "trl_soup.sources",
    "available_refresh_policies": "trl_soup.refresh",
    "register_refresh_policy": "trl_soup.refresh",
}

if TYPE_CHECKING:
    from .config import SOUPConfig
    from .pool import available_pool_samplings, register_pool_sampling
    from .refresh import available_refresh_policies, register_refresh_policy
    from .sources import available_prefix_sources, register_prefix_source
    from .trainer import SOUPTrainer
    from .truncation import available_prefix_strategies, register_prefix_strategy

__all__ = [
    "SOUPConfig",
    "SOUPTrainer",
    "__version__",
    "available_pool_samplings",
    "available_prefix_sources",
    "available_prefix_strategies",
    "available_refresh_policies",
    "register_pool_sampling",
    "register_prefix_source",
    "register_prefix_strategy",
    "register_refresh_policy",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'trl_soup' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
