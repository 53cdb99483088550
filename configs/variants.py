"""Method variants shared by every dataset config: `configs/<dataset>.py:<variant>`.

One row per SPEC ablation condition. `*_seedcode` variants turn on the
seeds' PyTorch behaviour (SPEC §10) through `method.seed_code=True`.
`arl_fixed` is ARL with the seeds' fixed ×1.5 encoder scaling.
`unimodal_<modality>` trains that one modality of the dataset alone (its
encoder and the fusion layer as its classifier, no unimodal loss term).
"""

VARIANTS = ("baseline", "ogm", "ogm_ge", "frequency", "frequency_control", "staleness",
            "adaptive", "boost", "boost_ogm", "boost_ogm_seedcode", "frequency_seedcode",
            "staleness_seedcode", "mmpareto", "pcgrad", "dwa", "gradnorm", "opm", "cggm",
            "inforeg", "agm", "miles", "pmr", "arl", "arl_fixed", "gblend")
UNIMODAL_PREFIX = "unimodal_"


def _only_modality(config, name: str):
  """Drops every modality but `name`; interventions that named another are cleared."""
  names = sorted(config.modalities.keys())
  if name not in names:
    raise ValueError(f"variant {UNIMODAL_PREFIX}{name}: the config has no modality {name!r} "
                     f"(it has: {', '.join(names)})")
  signal = config.dataset.synthetic.signal
  with config.unlocked(), signal.unlocked():
    for other in names:
      if other != name:
        del config.modalities[other]
        if other in signal:
          del signal[other]
  config.method.name = "unimodal"
  config.method.frequency.throttled = "probe"
  config.method.staleness.modalities = ""
  config.model.condition_modality = None
  config.loss.unimodal_weight = 0.0  # the fused logits are the unimodal logits
  return config


def apply_variant(config, variant: str | None):
  """Sets `config.method` for `variant` (None: baseline); returns the config."""
  variant = variant or "baseline"
  if variant.startswith(UNIMODAL_PREFIX):
    return _only_modality(config, variant[len(UNIMODAL_PREFIX):])
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}, "
                     f"or {UNIMODAL_PREFIX}<modality>")
  name = variant.removesuffix("_seedcode").removesuffix("_fixed")
  config.method.name = name
  config.method.seed_code = variant.endswith("_seedcode")
  if name == "ogm" or name == "ogm_ge":
    config.method.ogm.alpha = 0.8           # OGM-GE README value for CREMA-D
  if name == "boost":
    config.method.boost.alpha = 0.5
  if name == "boost_ogm":
    config.method.boost.alpha = 0.75        # best with OGM-GE in the seed sweeps
    config.method.ogm.alpha = 0.8
  if name == "mmpareto":
    config.model.unimodal_heads = "separate"  # Linear(D, C) per modality, as the reference
    config.loss.unimodal_weight = 1.0
  if name == "cggm":
    config.loss.unimodal_weight = 0.0         # CE(fused) + λ·L_gm; classifiers train apart
  if name == "opm":
    config.loss.unimodal_weight = 0.0         # OPM trains on the fused CE only
  if name == "inforeg":
    config.loss.unimodal_weight = 1.0         # CE(z) + Σ_m CE(z_m) on the split head
    config.model.unimodal_heads = "split"
    reference = {"audio": 0.95, "visual": 0.1}  # the reference's β scales
    config.method.inforeg.scales = ",".join(f"{m}={v}" for m, v in reference.items()
                                            if m in config.modalities)
  if name == "miles":
    config.model.unimodal_heads = "separate"  # its unimodal heads, judged on validation
    config.loss.unimodal_weight = 1.0
  if name == "pmr":
    config.loss.unimodal_weight = 0.0         # CE(fused) + α·CE(prototypes of the weaker)
  if name == "arl":
    config.loss.unimodal_weight = 1.0         # γ_eff = 1 up to start_epoch, method.arl.gamma after
    config.model.unimodal_heads = "split"
    # arl_fixed: the seeds' code, every encoder gradient ×1.5 instead of ×(1 + w_m)
    config.method.arl.scaling = "fixed" if variant == "arl_fixed" else "coefficients"
  if name == "gblend":
    config.model.unimodal_heads = "separate"  # a head per unimodal branch, as the reference
    config.loss.unimodal_weight = 1.0
  if name == "agm":
    config.loss.unimodal_weight = 0.0         # AGM's loss is CE(Σ_m Shapley output m) alone
  if name in ("pcgrad", "dwa", "gradnorm"):
    config.loss.unimodal_weight = 1.0         # the tasks: fused + every unimodal CE
  if name == "gradnorm" and config.model.fusion_dim is not None:
    config.method.gradnorm.layer = "encoders"
  return config
