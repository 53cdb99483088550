"""asgml_jax: ASGML and its baselines as pure-functional JAX/Flax/optax code."""
__version__ = "0.1.0"
