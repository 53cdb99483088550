"""Per-modality interventions as optax gradient transformations."""
