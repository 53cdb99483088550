"""The small checks every part of the config schema uses, and its error type.

Kept apart from `config_schema` so that method modules (which declare and
check their own config blocks) can use them without importing the schema,
which imports the method registry.
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
  """An experiment config that cannot be run; the message names the key."""


def require(ok: bool, key: str, problem: str) -> None:
  if not ok:
    raise ConfigError(f"config.{key}: {problem}")


def one_of(value: Any, allowed, key: str) -> None:
  require(value in allowed, key,
          f"unknown value {value!r}; choose one of {', '.join(map(str, allowed))}")


def lookup(cfg, key: str):
  """cfg["a"]["b"] for key "a.b"."""
  value = cfg
  for part in key.split("."):
    value = value[part]
  return value


def set_dotted(cfg, key: str, value) -> None:
  """cfg["a"]["b"] = value for key "a.b"."""
  *path, leaf = key.split(".")
  node = cfg
  for part in path:
    node = node[part]
  node[leaf] = value


def _finite_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def positive(cfg, key: str, *, integer: bool = False) -> None:
  """A finite number > 0 (inf, like nan, is no setting: it trains NaNs)."""
  value = lookup(cfg, key)
  kind = int if integer else (int, float)
  require(isinstance(value, kind) and _finite_number(value) and value > 0,
          key, f"must be a positive {'integer' if integer else 'number'}, got {value!r}")


def at_least(cfg, key: str, low: float) -> None:
  value = lookup(cfg, key)
  require(_finite_number(value) and value >= low, key, f"must be >= {low}, got {value!r}")


def in_range(cfg, key: str, low: float, high: float) -> None:
  """low <= value <= high."""
  value = lookup(cfg, key)
  require(low <= value <= high, key, f"must be in [{low}, {high}], got {value!r}")


def non_negative_int(cfg, key: str) -> None:
  value = lookup(cfg, key)
  require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key,
          f"must be an integer >= 0, got {value!r}")


def names_list(value: str) -> list[str]:
  """"a, b" -> ["a", "b"]."""
  return [n.strip() for n in value.split(",") if n.strip()]


def parse_named_floats(text: str, names, default: float) -> dict:
  """"audio=0.95,visual=0.1" → {m: float} over `names`; unnamed ones get `default`."""
  values = {m: float(default) for m in names}
  for item in (t.strip() for t in text.split(",")):
    if not item:
      continue
    name, sep, value = item.partition("=")
    if not sep or name.strip() not in values:
      raise ValueError(f"{item!r} is not <modality>=<number> for a modality of the config "
                       f"({', '.join(names)})")
    try:
      values[name.strip()] = float(value)
    except ValueError:
      raise ValueError(f"{item!r}: {value!r} is not a number") from None
  return values


def flatten(tree, prefix: str = "") -> dict:
  """{"a.b": value} of a nested dict (a config's JSON form)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def modality_names(config) -> tuple[str, ...]:
  """The configured modalities in their fixed (sorted) order."""
  return tuple(sorted(config.modalities.keys()))
