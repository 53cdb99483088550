"""Method variants shared by every dataset config: `configs/<dataset>.py:<variant>`.

A variant is a named preset over the method registry (asgml_jax/methods/):
- `<method>`: that method with its preset (the settings its reference uses,
  e.g. γ = 0 for PMR), for every registered method;
- further presets a method module names (`arl_fixed`: ARL with the seeds'
  fixed ×1.5 encoder scaling);
- named stacks (`boost_ogm` = the stack ogm_ge,boost with each part's preset
  and its own alphas; `baseline` = no method);
- `<variant>_seedcode`: the variant with the seeds' PyTorch behaviour
  (docs/methods.md, protocols) through `method.protocol=seed_code`; any variant also runs
  as its reference repository trains it with `--config.method.protocol=reference`;
- `unimodal_<modality>`: that one modality of the dataset alone (its encoder
  and the fusion layer as its classifier, no unimodal loss term).

A stack of methods without a variant is `--config.method.stack=a,b,c`.
"""

from asgml_jax import methods
from asgml_jax.config_checks import ConfigError, set_dotted
from asgml_jax.methods import unimodal

UNIMODAL_PREFIX = unimodal.VARIANT_PREFIX
SEEDCODE_SUFFIX = "_seedcode"


def _presets() -> dict:
  """{variant: (method.name, [preset functions], extra settings)}."""
  out = {"baseline": ("baseline", [], ())}
  for method in methods.all_methods():
    if method is unimodal.UNIMODAL:
      continue  # reached through its own prefix (unimodal_<modality>)
    preset = method.settings.preset
    out[method.name] = (method.name, [preset] if preset else [], ())
    for variant, preset in method.settings.variants.items():
      out[variant] = (method.name, [preset], ())
  for name, (stack, settings) in methods.NAMED_STACKS.items():
    if stack:
      parts = [methods.get(m).settings.preset for m in stack if methods.get(m).settings.preset]
      out[name] = (name, parts, settings)
  return out


PRESETS = _presets()
# Listed in the README and by `launch.sweep --variants`: every preset and the
# three with the seeds' code the seed ablations use.
VARIANTS = tuple(PRESETS) + tuple(f"{v}{SEEDCODE_SUFFIX}" for v in
                                  ("boost_ogm", "frequency", "staleness"))


def apply_variant(config, variant: str | None):
  """Sets `config.method` (and what the variant's methods need) for `variant`
  (None: baseline); returns the config."""
  variant = variant or "baseline"
  if variant.startswith(UNIMODAL_PREFIX):
    return methods.only_modality(config, variant[len(UNIMODAL_PREFIX):])
  base = variant.removesuffix(SEEDCODE_SUFFIX)
  if base not in PRESETS:
    raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}, "
                      f"{UNIMODAL_PREFIX}<modality>, or any of them + {SEEDCODE_SUFFIX}")
  name, presets, settings = PRESETS[base]
  config.method.name = name
  config.method.stack = ""
  config.method.seed_code = False
  config.method.protocol = "seed_code" if variant.endswith(SEEDCODE_SUFFIX) else "design"
  for preset in presets:
    preset(config)
  for key, value in settings:
    set_dotted(config, key, value)
  return config
