"""What every launcher shares: user mistakes and stop signals as one line.

A user's mistake (an unknown `--config.<key>`, a misspelt variant, a missing
config file, a bad value, a workdir that cannot be used, a raw file that does
not decode, a damaged checkpoint) ends the command with `error: <what>: <why>`
on stderr and exit code 2 (configuration) or 1 (data, workdir, run); no
traceback. A bug in the project still shows its traceback: that one is ours
to read. SIGTERM/SIGINT print what was saved and exit with 128 + the signal.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags, logging

from asgml_jax import interrupts


def _config_override_in(argv, key: str) -> str:
  """The `--config.a.b=...` argument whose leaf is `key`, for the message."""
  for arg in argv:
    name = arg.split("=", 1)[0]
    if name.startswith("--config.") and name.split(".")[-1] == key:
      return name
  return f"--config...{key}"


def flag_error_line(err: BaseException, argv) -> str:
  """One line for an error raised while absl/ml_collections parse the flags."""
  text = str(err)
  if isinstance(err, (AttributeError, KeyError)):
    text = text.strip("'\"").replace("\\n", "\n").replace("\\'", "'")
    key = text.splitlines()[0].strip("'\"")
    hint = re.search(r'Did you mean "([^"]+)"', text)
    flag = _config_override_in(argv, key)
    line = f"{flag}: no such config key"
    if hint:
      line += f"; did you mean {flag.rsplit('.', 1)[0]}.{hint.group(1)}?"
    return line
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  if not lines:
    return type(err).__name__
  first = re.sub(r"^flag ", "", lines[0]).rstrip(":")
  missing = [l for l in lines if "No such file or directory" in l]
  if "Failed loading config file" in text and missing:
    path = re.search(r"No such file or directory: '([^']+)'", missing[0])
    return f"--config {path.group(1) if path else ''}: no such config file"
  if "Error whilst parsing config file" in text:
    cause = re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", lines[-1])
    return f"{first.split(': Error whilst')[0]}: {cause}"
  return first


def _parse_flags(argv):
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      flags.FLAGS["config"].value.keys()  # config_flags defers a load failure to first use
    return rest
  except Exception as err:  # absl and config_flags raise several kinds, all user input
    print(f"error: {flag_error_line(err, argv)}", file=sys.stderr, flush=True)
    sys.exit(2)


def quiet_logs() -> None:
  """Python-side library logs at ERROR and above only (TFDS's "Using custom data
  configuration: ..." dumps, orbax and clu INFO/WARNING lines) and
  TensorFlow's import notices (`tensorflow_import`), unless the user asked
  for a --verbosity: the first screen is for the run's own lines."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
    from asgml_jax import tensorflow_import
    tensorflow_import.import_quietly()


def join_cluster() -> None:
  """Several processes (launch/local_cluster.py, or ASGML_COORDINATOR & co. set
  by a scheduler): join before anything touches JAX (asgml_jax/distributed.py)."""
  from asgml_jax import distributed
  distributed.initialize_from_env()


def compilation_cache() -> None:
  """The launchers' persistent compilation cache (asgml_jax/compile_cache.py:
  where, and the ASGML_COMPILATION_CACHE=off opt-out)."""
  from asgml_jax import compile_cache
  compile_cache.enable()


def user_errors() -> tuple[type, ...]:
  """Exceptions that mean the user's input, not a bug (imported late: heavy)."""
  from asgml_jax.checkpointing import CheckpointError
  from asgml_jax.config_checks import ConfigError
  from asgml_jax.run_dir import WorkdirError
  from asgml_jax.loop import NonFiniteError
  from data_prep.common import BadInputError
  return (ConfigError, NonFiniteError, FileNotFoundError, BadInputError, WorkdirError,
          CheckpointError)


def exit_code(err: BaseException) -> int:
  from asgml_jax.config_checks import ConfigError
  return 2 if isinstance(err, ConfigError) else 1


def report(err: BaseException) -> None:
  print(f"error: {err}", file=sys.stderr, flush=True)
  sys.exit(exit_code(err))


def run(main, argv=None) -> None:
  """`app.run(main)` with flag mistakes, stop signals and user errors
  (`user_errors`) as one line each; a real bug keeps its traceback. argv:
  the command line (default sys.argv; the tests run launchers in-process)."""
  interrupts.install()
  try:
    app.run(main, argv=argv, flags_parser=_parse_flags)
  except interrupts.Interrupted as stop:
    interrupts.handled()
    print(stop.line(), file=sys.stderr, flush=True)
    sys.exit(stop.exit_code)
  except Exception as err:
    if isinstance(err, user_errors()):
      report(err)
    raise
