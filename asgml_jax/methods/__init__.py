"""The registry of methods: one line per method module.

A method is one module of this package declaring a `Method`
(`asgml_jax/methods/base.py`); listing it below is all it takes for the
config schema, the trainer, the sweeps, the epoch hooks and the report to
know it, and for `method.stack` to compose it with the others
(`asgml_jax/methods/stack.py`). docs/adding_a_method.md walks through one.
"""

from __future__ import annotations

from asgml_jax.methods import (adaptive, agm, amco, arl, aug, boost, cggm, cml, dgl, di_mml, dwa,
                               frequency, g2d, gblend, greedy, gradnorm, inforeg, iprm, lfm, mbsd,
                               miles, mla, mmcosine, mmpareto, mslr, ogm_ge, opm, pcgrad, pmr,
                               reconboost, relearning, staleness, ume, umt, unimodal, valuation)
from asgml_jax.methods.base import Method

REGISTRY: tuple[Method, ...] = (
    ogm_ge.OGM,
    ogm_ge.OGM_GE,
    boost.BOOST,
    frequency.FREQUENCY,
    frequency.FREQUENCY_CONTROL,
    staleness.STALENESS,
    adaptive.ADAPTIVE,
    unimodal.UNIMODAL,
    mmpareto.MMPARETO,
    pcgrad.PCGRAD,
    dwa.DWA,
    gradnorm.GRADNORM,
    opm.OPM,
    cggm.CGGM,
    inforeg.INFOREG,
    agm.AGM,
    miles.MILES,
    pmr.PMR,
    arl.ARL,
    gblend.GBLEND,
    mslr.MSLR,
    mmcosine.MMCOSINE,
    cml.CML,
    mbsd.MBSD,
    relearning.RELEARNING,
    mla.MLA,
    umt.UMT,
    ume.UME,
    lfm.LFM,
    reconboost.RECONBOOST,
    amco.AMCO,
    greedy.GREEDY,
    valuation.VALUATION,
    dgl.DGL,
    g2d.G2D,
    iprm.IPRM,
    di_mml.DI_MML,
    aug.AUG,
)

# Named stacks: a `method.name` that means several methods, and the settings
# its variant adds to theirs (dotted key under config, value).
NAMED_STACKS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, object], ...]]] = {
    "baseline": ((), ()),
    # ASGML's headline: OGM-GE throttles the dominant, boost pushes the weak.
    "boost_ogm": (("ogm_ge", "boost"), (("method.boost.alpha", 0.75),)),  # best with OGM-GE
}

# `config.method.name` by default: joint training, no method.
DEFAULT_NAME = "baseline"

_BY_NAME = {m.name: m for m in REGISTRY}
if len(_BY_NAME) != len(REGISTRY):
  raise ValueError("two registered methods share a name")


def all_methods() -> tuple[Method, ...]:
  return REGISTRY


def get(name: str) -> Method:
  """The registered method `name` (KeyError if none)."""
  return _BY_NAME[name]


def method_names() -> tuple[str, ...]:
  return tuple(_BY_NAME)


def names_for_method_key() -> tuple[str, ...]:
  """What `config.method.name` accepts: a named stack or a method."""
  return tuple(NAMED_STACKS) + method_names()


def blocks() -> dict:
  """{block name: defaults()} of every method's config group (shared ones once)."""
  out = {}
  for method in REGISTRY:
    block = method.settings.block
    if block is not None and block not in out:
      out[block] = method.settings.defaults()
  return out


def only_modality(config, name: str):
  """Drops every modality but `name`; method settings that named another forget
  it, and blocks between modalities (MMTM) go."""
  names = sorted(config.modalities.keys())
  if name not in names:
    raise ValueError(f"variant {unimodal.VARIANT_PREFIX}{name}: the config has no modality {name!r} "
                     f"(it has: {', '.join(names)})")
  signal = config.dataset.synthetic.signal
  with config.unlocked(), signal.unlocked():
    for other in names:
      if other != name:
        del config.modalities[other]
        if other in signal:
          del signal[other]
        for method in REGISTRY:
          if method.settings.drop_modality is not None:
            method.settings.drop_modality(config, other)
  config.method.name = "unimodal"
  config.method.stack = ""
  config.model.condition_modality = None
  config.model.mid_fusion = "none"   # MMTM blocks join two modalities' stages: none is left to join
  config.loss.unimodal_weight = 0.0  # the fused logits are the unimodal logits
  return config
