"""The library's XLA:CPU flags: added once, never over the user's, and in force."""

import os
import subprocess
import sys

from asgml_jax import xla_flags

YNN = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def test_flags_are_added_unless_the_user_sets_them():
  assert xla_flags.flags_to_add("", (0, 10)) == [YNN]
  assert xla_flags.flags_to_add("--xla_force_host_platform_device_count=4", (0, 11)) == [YNN]
  user = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  assert xla_flags.flags_to_add(user, (0, 10)) == []
  assert xla_flags.flags_to_add(f"--a=1 {user} --b=2", (0, 10)) == []
  assert xla_flags.flags_to_add("", (0, 9)) == []   # XLA before 0.10 may not know the flag


def _compiled_convolution_backend(env_update: dict) -> str:
  """Imports asgml_jax in a fresh process and says who runs a compiled convolution."""
  code = (
      "import asgml_jax, os, jax, jax.numpy as jnp\n"
      "from jax import lax\n"
      "f = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
      "dimension_numbers=('NHWC', 'HWIO', 'NHWC')))\n"
      "text = f.lower(jnp.ones((8, 32, 32, 16)), jnp.ones((3, 3, 16, 32))).compile().as_text()\n"
      "print(os.environ.get('XLA_FLAGS', ''))\n"
      "print('ynn' if '__ynn_fusion' in text else 'xla')\n")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ASGML_XLA_FLAGS")}
  env.update(env_update, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, timeout=300).stdout.split("\n")
  return out[0], out[1]


def test_importing_asgml_jax_keeps_convolutions_off_ynnpack():
  flags, backend = _compiled_convolution_backend({})
  assert YNN in flags and backend == "xla"
  # The switch that turns the library's flags off restores XLA's default (YNNPACK).
  flags, backend = _compiled_convolution_backend({"ASGML_XLA_FLAGS": "off"})
  assert YNN not in flags and backend == "ynn"
  # A user's own setting of the flag is kept as written.
  user = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  flags, backend = _compiled_convolution_backend({"XLA_FLAGS": user})
  assert flags == user and backend == "ynn"
