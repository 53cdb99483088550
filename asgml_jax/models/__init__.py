"""Flax Linen modules of the late-fusion classifier."""
from asgml_jax.models.multimodal import EncoderSpec, MultimodalClassifier, model_from_config

__all__ = ["EncoderSpec", "MultimodalClassifier", "model_from_config"]
