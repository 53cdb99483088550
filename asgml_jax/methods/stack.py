"""A run's stack of methods: which, in what order, whether they compose, and
the parts the trainer gets from them.

`config.method.stack` ("ogm_ge,boost,staleness") names the methods; when it
is empty, `config.method.name` does (a method, or a named stack such as
`boost_ogm`; `baseline` is the empty stack). The order the user writes does
not matter: parts run in the canonical order of `base.STAGES` (combine, edit
by rank, schedule, post), which for ASGML's methods (docs/methods.md, composition) is
chain(OGM-GE, boost, schedule(weight decay, momentum, lr)). Loss terms add up
in the same order.

Stacks that cannot compose are refused by `check_stack` before anything
runs, in one line naming both methods and why: two combiners, two update
schedules, two owners of the fused loss, two feature gates, two γ schedules,
two methods that keep the same optimizer-state field, different values of a
config key both require, a method that stacks with nothing, or a pair a
method excludes by name.

Presets (the variants' settings, e.g. γ = 0 for PMR) are not applied to a
stack given on the command line: the config's values stand, so
`configs/default.py:pmr --config.method.stack=pmr,boost` is PMR's settings
plus boost, and `--config.method.stack=pmr,boost` alone is the config's.
"""

from __future__ import annotations

import difflib
import itertools
from typing import Any, Mapping, Sequence

import ml_collections

from asgml_jax import config_checks as cc
from asgml_jax import methods as registry
from asgml_jax.methods.base import STAGES, Method, Plot, Signal

# Signals of the update schedule every run has (joint training's too).
SCHEDULE_SIGNALS = (Signal("tau", "sched/tau", "update period tau"),
                    Signal("flags", "sched/update"),
                    Signal("update_ratio", "sched/update_ratio", "update ratio"),
                    Signal("grad_norms_in", "grad_norm_after"))
# Step metrics every run logs that the report plots.
COMMON_PLOTS = (Plot("probe/acc", "probe accuracy (train-time probes)"),)


def _split(text: str) -> list[str]:
  return cc.names_list(text)


def requested_names(method_cfg: Mapping) -> list[str]:
  """The method names a config's `method` group asks for, named stacks expanded."""
  stack = method_cfg.get("stack", "") or ""
  names = _split(stack) if stack else [method_cfg["name"]]
  out = []
  for name in names:
    out.extend(registry.NAMED_STACKS[name][0] if name in registry.NAMED_STACKS else [name])
  return out


def _order_key(method: Method):
  stage = method.optax.stage
  return (STAGES.index(stage) if stage in STAGES else len(STAGES), method.optax.rank,
          registry.REGISTRY.index(method))


def ordered(methods: Sequence[Method]) -> tuple[Method, ...]:
  """Canonical order: combine, edit (by rank), schedule, post, then the rest."""
  return tuple(sorted(methods, key=_order_key))


def _unknown(name: str) -> cc.ConfigError:
  known = registry.method_names()
  close = difflib.get_close_matches(name, known + tuple(registry.NAMED_STACKS), n=1)
  hint = f" (did you mean '{close[0]}'?)" if close else ""
  return cc.ConfigError(f"config.method.stack: unknown method {name!r}{hint}; choose from "
                        f"{', '.join(known)}")


def resolve(method_cfg: Mapping) -> tuple[Method, ...]:
  """The config's methods in canonical order (ConfigError for an unknown or repeated name)."""
  names = requested_names(method_cfg)
  seen = set()
  for name in names:
    if name in seen:
      raise cc.ConfigError(f"config.method.stack: {name} is listed twice")
    seen.add(name)
  try:
    return ordered([registry.get(n) for n in names])
  except KeyError as err:
    raise _unknown(err.args[0]) from None


def pair_conflict(a: Method, b: Method) -> str | None:
  """Why `a` and `b` cannot stack, or None if they can (the rules are the
  records' own: `Method.conflict_with`)."""
  return a.conflict_with(b)


def check_stack(methods: Sequence[Method]) -> None:
  """ConfigError naming the first pair that cannot stack."""
  for a, b in itertools.combinations(methods, 2):
    why = pair_conflict(a, b)
    if why:
      raise cc.ConfigError(f"config.method.stack: {a.name} and {b.name} cannot stack: {why}")


def validate(config) -> tuple[Method, ...]:
  """Checks every block, the stack and its requirements; returns the stack."""
  cc.one_of(config.method.name, registry.names_for_method_key(), "method.name")
  for method in registry.all_methods():
    if method.settings.check_block is not None:
      method.settings.check_block(config)
  methods = resolve(config.method)
  check_stack(methods)
  for method in methods:
    for r in method.settings.requires:
      cc.require(cc.lookup(config, r.key) == r.value, r.key, f"{r.why}: use {r.value!r}")
    if method.settings.check is not None:
      method.settings.check(config)
  return methods


def method_name(config: Mapping) -> str:
  """`method.name`, or for a stack its methods joined by '+' in canonical order."""
  method_cfg = config["method"]
  if method_cfg.get("stack"):
    return "+".join(m.name for m in resolve(method_cfg))
  return method_cfg["name"]


def run_label(config: Mapping) -> str:
  """A run's label from its (saved) config: its `label` if set, else the named
  stack or method, or the stack joined by '+' in canonical order; `_seedcode`
  or `_reference` for those protocols."""
  if config.get("label"):
    return config["label"]
  method_cfg = config["method"]
  if method_cfg.get("stack"):
    try:
      label = "+".join(m.run_label(config) for m in resolve(method_cfg))
    except cc.ConfigError:
      label = "+".join(_split(method_cfg["stack"]))
  else:
    name = method_cfg["name"]
    method = dict((m.name, m) for m in registry.all_methods()).get(name)
    label = method.run_label(config) if method is not None else name
  protocol = "seed_code" if method_cfg.get("seed_code") else method_cfg.get("protocol", "design")
  return label + {"design": "", "seed_code": "_seedcode", "reference": "_reference"}.get(
      protocol, f"_{protocol}")


def signals() -> tuple[Signal, ...]:
  """Every state signal any method (or the schedule) may keep, one per field."""
  out, seen = [], set()
  for s in SCHEDULE_SIGNALS + tuple(s for m in registry.all_methods() for s in m.logging.signals):
    if s.field not in seen:
      seen.add(s.field)
      out.append(s)
  return tuple(out)


def _tag_prefix(metric_prefix: str) -> str:
  """The TensorBoard tag prefix of a metric prefix (run_dir.train_tag's rule)."""
  return (metric_prefix if "/" in metric_prefix else f"train/{metric_prefix}") + "_"


def _merge_titles(titles: list[str]) -> str:
  """"loss weight (DWA)", "loss weight (GradNorm)" -> "loss weight (DWA / GradNorm)"."""
  unique = list(dict.fromkeys(titles))
  heads = {t.partition(" (")[0] for t in unique}
  if len(unique) > 1 and len(heads) == 1 and all(t.endswith(")") for t in unique):
    return f"{heads.pop()} ({' / '.join(t.partition(' (')[2][:-1] for t in unique)})"
  return " / ".join(unique)


def plots() -> tuple[tuple[str, str], ...]:
  """(TensorBoard tag prefix, title) of every per-modality quantity the report plots."""
  titles: dict[str, list[str]] = {}
  entries = [(p.prefix, p.title) for p in COMMON_PLOTS]
  entries += [(s.prefix, s.title) for s in SCHEDULE_SIGNALS if s.title]
  for method in registry.all_methods():
    entries += [(s.prefix, s.title) for s in method.logging.signals if s.title]
    entries += [(p.prefix, p.title) for p in method.logging.plots]
  for prefix, title in entries:
    titles.setdefault(_tag_prefix(prefix), []).append(title)
  return tuple((prefix, _merge_titles(t)) for prefix, t in titles.items())


def seed_code_settings() -> tuple[tuple[str, Any], ...]:
  """Every method's seed-code settings (docs/methods.md), in registry order, once each."""
  out = {}
  for method in registry.all_methods():
    for key, value in method.protocols.seed_code:
      out.setdefault(key, value)
  return tuple(out.items())


def _settings_of(method: Method, config) -> dict:
  """{dotted key: value} that `method`'s reference options set on `config`."""
  changed = dict(method.protocols.reference)
  if method.protocols.reference_fn is not None:
    probe = ml_collections.ConfigDict(config.to_dict())
    before = cc.flatten(probe.to_dict())
    method.protocols.reference_fn(probe)
    changed.update({k: v for k, v in cc.flatten(probe.to_dict()).items() if before.get(k) != v})
  return changed


def reference_settings(config) -> tuple[tuple[str, Any], ...]:
  """What protocol=reference forces: every stacked method's reference options.
  ConfigError when two methods of the stack set one key differently."""
  owner: dict[str, tuple[str, Any]] = {}
  for method in resolve(config.method):
    for key, value in _settings_of(method, config).items():
      if key in owner and owner[key][1] != value:
        raise cc.ConfigError(
            f"config.method.protocol: reference: {owner[key][0]} and {method.name} cannot "
            f"stack: their references set {key} to {owner[key][1]!r} and {value!r}")
      owner[key] = (method.name, value)
  return tuple((k, v) for k, (_, v) in owner.items())


def reference_optimizer(config):
  """The `ReferenceOptimizer` the stack's references train `config`'s dataset
  with. ConfigError (naming `method.reference_optimizer`) when the stack is
  empty, a method's reference names none for the dataset, or two methods'
  references train differently."""
  key = "config.method.reference_optimizer"
  stacked = resolve(config.method)
  if not stacked:
    raise cc.ConfigError(f"{key}: the baseline has no reference script; name a method "
                         "(method.name or method.stack) or set optimizer.* yourself")
  dataset = config.dataset.name
  chosen = None
  for method in stacked:
    table = method.protocols.optimizers_for(config)
    if not table:
      raise cc.ConfigError(f"{key}: {method.name}'s reference names no optimizer "
                           f"(docs/methods.md); set optimizer.* yourself")
    if dataset not in table:
      named = ", ".join(sorted(table))
      raise cc.ConfigError(
          f"{key}: {method.name}'s reference ({next(iter(table.values())).repository}) names "
          f"no optimizer for dataset {dataset} (its scripts train {named}); set optimizer.* "
          "yourself")
    found = table[dataset]
    if chosen is not None and chosen[1].settings() != found.settings():
      raise cc.ConfigError(
          f"{key}: {chosen[0]} and {method.name} cannot stack: their references train "
          f"{dataset} differently ({chosen[1].source} and {found.source})")
    chosen = chosen or (method.name, found)
  return chosen[1]


def reference_optimizer_settings(config) -> tuple[tuple[str, Any], ...]:
  """What `method.reference_optimizer=True` forces (dotted key, value)."""
  return reference_optimizer(config).settings()
