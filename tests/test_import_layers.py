"""Imports run only downward through the layers of docs/architecture.md.

Every import statement of `asgml_jax/` is read (module level and inside
functions): a module may import its own layer and those beneath it, never
one above; no import circle remains; and no project module is imported
inside a function (such imports are how a circle hides). Importing the
configs and the orchestration modules starts no JAX backend (several
processes must join their cluster first, and the compilation cache be set).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys


from conftest import ROOT

# From the ground up; a module's layer is the first entry that is its name or
# a package above it ("models" holds asgml_jax.models.*).
LAYERS = (
    ("foundations", ("xla_flags", "config_checks", "losses", "interrupts", "workdir_lock",
                     "significance", "clustering", "tensorflow_import", "compile_cache",
                     "checkpoint_integrity", "weight_files", "distributed")),
    ("models, transforms, probes", ("models", "transforms", "probes", "augment",
                                    "input_adapters", "pretrained", "metrics")),
    ("tasks", ("tasks",)),
    ("method types", ("methods.base",)),
    ("methods", ("methods",)),
    ("training core", ("steps", "optim", "state", "input_pipeline", "parallel", "checkpointing",
                       "run_dir", "epoch_hooks", "programs")),
    ("plan", ("config_schema", "plan")),
    ("loop", ("loop",)),
    ("orchestration", ("train", "sweep", "teachers", "report")),
)
PACKAGE = "asgml_jax"


def _modules() -> dict[str, str]:
  out = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = path
  return out


MODULES = _modules()


def layer_of(module: str) -> int:
  """The index in LAYERS of a project module (`asgml_jax.x.y`)."""
  name = module[len(PACKAGE) + 1:]
  for index, (_, members) in enumerate(LAYERS):
    if any(name == m or name.startswith(m + ".") for m in members):
      return index
  raise AssertionError(f"{module} is in no layer of LAYERS: place it")


def imports_of(path: str, own: str) -> list[tuple[str, int, bool]]:
  """(imported project module, line, inside a function) of every import in a file."""
  tree = ast.parse(open(path).read())
  parents = {c: node for node in ast.walk(tree) for c in ast.iter_child_nodes(node)}

  def in_function(node) -> bool:
    while node in parents:
      node = parents[node]
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return True
    return False

  found = []
  for node in ast.walk(tree):
    targets = []
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      # `from asgml_jax import x` imports the module asgml_jax.x when there is one
      targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES
                 else node.module for a in node.names]
    for target in targets:
      if target in MODULES and target != own and target != PACKAGE:
        found.append((target, node.lineno, in_function(node)))
  return found


EDGES = {m: imports_of(p, m) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
  for module in MODULES:
    if module != PACKAGE:
      layer_of(module)


def test_no_module_imports_a_layer_above_its_own():
  upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]}), line {line}"
            for m, edges in EDGES.items() if m != PACKAGE
            for t, line, _ in edges if layer_of(t) > layer_of(m)]
  assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_circle():
  graph = {m: sorted({t for t, _, _ in edges}) for m, edges in EDGES.items()}
  state: dict[str, int] = {}
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for nxt in graph[node]:
      if state.get(nxt) == 1:
        raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt)
    path.pop()
    state[node] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module)


def test_project_modules_are_imported_at_module_level():
  inside = [f"{m}: line {line} imports {t}" for m, edges in EDGES.items()
            for t, line, fn in edges if fn]
  assert not inside, "function-level imports of project modules:\n" + "\n".join(inside)


_NO_BACKEND = """
from jax._src import xla_bridge
def refuse(*args, **kwargs):
  raise SystemExit("the JAX backend was started at import")
xla_bridge.backends = refuse
import asgml_jax.report, asgml_jax.sweep, asgml_jax.teachers, asgml_jax.train, launch.cli
from configs import default
from configs.variants import VARIANTS
for variant in VARIANTS:
  default.get_config(variant)
print("ok")
"""


def test_imports_and_configs_start_no_backend():
  proc = subprocess.run([sys.executable, "-c", _NO_BACKEND], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
