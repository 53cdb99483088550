"""The trainer's modules ask the method registry; none names a method.

After the method-modules refactor a new method touches its own module, one
registry line, its test and the docs. This test keeps it so: no registered
method name (nor a named stack or variant) appears as a word in the core
modules, as `grep -w` would find it. Names are lower-case identifiers; prose
that cites a paper or its repository ("OGM-GE's test list") is not a name.
"unimodal" and "baseline" are also everyday words of this field (unimodal
heads, the baseline's run), so for them only a quoted name counts.
"""

import os
import re

import pytest

from asgml_jax import methods
from configs.variants import VARIANTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = ("steps", "optim", "train", "sweep", "config_schema", "epoch_hooks", "report")
GENERIC_WORDS = {"unimodal", "baseline"}


def _names():
  return sorted(set(methods.method_names()) | set(methods.NAMED_STACKS) | set(VARIANTS))


@pytest.mark.parametrize("module", CORE)
def test_core_module_names_no_method(module):
  with open(os.path.join(ROOT, "asgml_jax", f"{module}.py")) as f:
    text = f.read()
  found = []
  for name in _names():
    pattern = (rf"[\"']{name}[\"']" if name in GENERIC_WORDS else rf"\b{re.escape(name)}\b")
    found += [f"{name} (line {text[:m.start()].count(chr(10)) + 1})"
              for m in re.finditer(pattern, text)]
  assert not found, f"asgml_jax/{module}.py names methods: {', '.join(found)}"
