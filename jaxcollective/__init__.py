"""jaxcollective: collectives of small MLPs against monolithic MLPs, in JAX/Flax.

Imports are lazy: `import jaxcollective` (or its command-line modules) does not import
JAX, so a run installs its signal handlers and checks its config at once, and the
report runs where JAX is not installed.
"""

from jaxcollective.config import Config, ConfigError

__all__ = ["Config", "ConfigError", "describe"]


def __getattr__(name):
    if name == "describe":
        from jaxcollective.api import describe

        return describe
    raise AttributeError(f"module 'jaxcollective' has no attribute {name!r}")
