"""fgjax: fine-grained visual recognition in JAX/Flax."""

__version__ = "0.1.0"
