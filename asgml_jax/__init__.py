"""asgml_jax: ASGML and its baselines as pure-functional JAX/Flax/optax code."""
from asgml_jax import xla_flags as _xla_flags

# Before any JAX computation starts a backend: XLA reads its flags once.
_xla_flags.apply()

__version__ = "0.1.0"
