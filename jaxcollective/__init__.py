"""jaxcollective: collectives of small MLPs against monolithic MLPs, in JAX/Flax."""

from .api import describe
from .config import Config, ConfigError

__all__ = ["Config", "ConfigError", "describe"]
