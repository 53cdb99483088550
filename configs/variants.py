"""Method variants shared by every dataset config: `configs/<dataset>.py:<variant>`.

One row per SPEC ablation condition. `*_seedcode` variants turn on the
seeds' PyTorch behaviour (SPEC §10) through `method.seed_code=True`.
"""

VARIANTS = ("baseline", "ogm", "ogm_ge", "frequency", "frequency_control", "staleness",
            "adaptive", "boost", "boost_ogm", "boost_ogm_seedcode", "frequency_seedcode",
            "staleness_seedcode")


def apply_variant(config, variant: str | None):
  """Sets `config.method` for `variant` (None: baseline); returns the config."""
  variant = variant or "baseline"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
  name = variant.removesuffix("_seedcode")
  config.method.name = name
  config.method.seed_code = variant.endswith("_seedcode")
  if name == "ogm" or name == "ogm_ge":
    config.method.ogm.alpha = 0.8           # OGM-GE README value for CREMA-D
  if name == "boost":
    config.method.boost.alpha = 0.5
  if name == "boost_ogm":
    config.method.boost.alpha = 0.75        # best with OGM-GE in the seed sweeps
    config.method.ogm.alpha = 0.8
  return config
