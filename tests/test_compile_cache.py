"""The launchers' persistent compilation cache: a second run loads, not compiles.

Two `launch.train` processes on the same tiny config, in two workdirs, with
one fresh cache folder: the first says it compiled its programs and kept
them there, the second that it loaded the same number from the cache; both
train to the same summary (the cache holds the same executables).
"""

import json
import os
import re
import subprocess
import sys

from asgml_jax import compile_cache
from conftest import ROOT, tiny_mlp_cli


def test_second_run_loads_what_the_first_compiled(tmp_path, tfds_dir):
  cache = tmp_path / "xla_cache"
  env = dict(os.environ, JAX_PLATFORMS="cpu", ASGML_COMPILATION_CACHE=str(cache))
  logs = {}
  for name in ("first", "second"):
    proc = subprocess.run([sys.executable, "-m", "launch.train", "--workdir",
                           str(tmp_path / name), *tiny_mlp_cli(tfds_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs[name] = proc.stdout + proc.stderr
  compiled = re.search(r"first step after [\d.]+ s: compiled (\d+) program\(s\), kept in (\S+)",
                       logs["first"])
  assert compiled, logs["first"][-2000:]
  assert compiled.group(2) == str(cache) and len(os.listdir(cache)) >= int(compiled.group(1))
  loaded = re.search(r"first step after [\d.]+ s: loaded (\d+) program\(s\) from the "
                     r"compilation cache \(saved ([\d.]+) s", logs["second"])
  assert loaded, logs["second"][-2000:]
  assert int(loaded.group(1)) == int(compiled.group(1))
  summaries = [json.loads((tmp_path / n / "summary.json").read_text()) for n in logs]
  assert summaries[0]["final"] == summaries[1]["final"]


def test_where_the_cache_goes(monkeypatch, tmp_path):
  monkeypatch.setenv("ASGML_COMPILATION_CACHE", "off")
  assert compile_cache.chosen_dir() is None
  monkeypatch.setenv("ASGML_COMPILATION_CACHE", str(tmp_path / "mine"))
  assert compile_cache.chosen_dir() == str(tmp_path / "mine")
  monkeypatch.delenv("ASGML_COMPILATION_CACHE")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
  assert compile_cache.chosen_dir() == str(tmp_path / "jax")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.chosen_dir() == str(tmp_path / "xdg" / "asgml_jax" / "xla")


def test_an_unwritable_cache_is_one_note_and_compiling_goes_on(monkeypatch, tmp_path, capsys):
  """A cache folder that cannot be written (read-only mount; root ignores
  chmod, so the write itself is made to fail) is one note, and the cache stays
  off (JAX would warn at each compilation it cannot store: 66 lines)."""
  import jax
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("ASGML_COMPILATION_CACHE", str(tmp_path / "ro"))

  def refuse(**kwargs):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(compile_cache.tempfile, "mkstemp", refuse)
  assert compile_cache.enable() is None
  out = capsys.readouterr().out.strip().splitlines()
  assert out == [f"note: the compilation cache {tmp_path / 'ro'} cannot be written (Permission "
                 "denied); compiling without it (set ASGML_COMPILATION_CACHE to another folder, "
                 "or to off)"]
  assert jax.config.jax_compilation_cache_dir == before
