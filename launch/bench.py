r"""Benchmark the jitted train step: the cost of each method, and of seeds in one program.

  python -m launch.bench --config configs/cremad.py --out bench_cremad.json
  python -m launch.bench --config configs/av_digits.py --seeds 5 --out bench_avd.json

For the config's model and shapes (random data of those shapes, held on the
device like a small dataset, so no dataset has to be built), each method row
is compiled, run for `--warmup` steps, then timed over `--windows` windows of
`--steps` steps each (`block_until_ready` at the end of each window); the
median window gives steps/s and examples/s. Also per row: compile time (a
load when the step came from the persistent compilation cache, marked
"(loaded)"; ASGML_COMPILATION_CACHE=off to time compilation),
peak device memory, XLA's FLOP count of the compiled step and the achieved
FLOP/s, and the ratio of its step time to the baseline row's: the cost of
the method. Probes refresh every `probes.eval_freq` steps inside the timed
windows (keep `--steps` a multiple of it, default 20). The staleness row also
reports its gradient ring buffers' bytes next to τ copies of the stale
encoders' gradients, which is what they must be.

`--seeds S` adds, for every row, the step of S seeds in one program (as
`launch.sweep` runs them) and its per-seed cost relative to one seed.

`--whole_runs E` instead times whole runs on the config's real dataset: S
(`--seeds`, default 5) sequential `launch.train` runs of E epochs against one
`launch.sweep` of the same S seeds, wall clock from config to summary (data
loading, compilation, training, evaluation, checkpoints), then projects both
to the config's `num_epochs` with each one's steady epoch time (the median of
epochs 2..E) and reports seeds per hour and their ratio:

  python -m launch.bench --config configs/av_digits.py --whole_runs 3 --seeds 5

Rows go to stdout as a table and, with `--out`, to a JSON file.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (file.py[:arg]).",
                                          lock_config=False)
_METHODS = flags.DEFINE_list("methods", ["baseline", "ogm_ge", "boost_ogm", "staleness",
                                         "adaptive"], "Rows: configs/variants.py variants.")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed window.")
_WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_SEEDS = flags.DEFINE_integer("seeds", 0, "Also time S seeds in one program (0: skip).")
_SEED_AXIS = flags.DEFINE_enum("seed_axis", "auto", ["auto", "vmap", "unroll"],
                               "How the seed rows compile the seed axis.")
_TAU = flags.DEFINE_integer("staleness_tau", 4, "τ of the staleness row.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Classes (default: the dataset's).")
_WHOLE_RUNS = flags.DEFINE_integer("whole_runs", 0, "Time S sequential runs of this many "
                                   "epochs against one sweep of them (0: step rows instead).")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 0, "After timing a row, profile this "
                                      "many steps and print where the step's time goes, by "
                                      "HLO op category (launch/op_profile.py; 0: skip).")
_OUT = flags.DEFINE_string("out", None, "Write the rows to this JSON file.")
flags.mark_flags_as_required(["config"])

NUM_CLASSES = {"av_digits": 10, "cremad": 6, "ave": 28, "kinetics_sounds": 31, "mmsa": 3}


def _num_classes(config) -> int:
  if _NUM_CLASSES.value:
    return _NUM_CLASSES.value
  if config.dataset.name == "synthetic":
    return config.dataset.synthetic.num_classes
  if config.dataset.name in NUM_CLASSES:
    return NUM_CLASSES[config.dataset.name]
  raise app.UsageError(f"--num_classes: no default for dataset {config.dataset.name!r}")


def random_train_data(config, num_examples: int, num_classes: int, key) -> dict:
  """Device arrays shaped like the config's stored train split (frames as uint8)."""
  import jax
  import jax.numpy as jnp
  from asgml_jax.config_checks import modality_names
  data = {}
  for i, name in enumerate(modality_names(config)):
    mod, k = config.modalities[name], jax.random.fold_in(key, i)
    if mod.image_augment == "imagenet":
      size = config.dataset[config.dataset.name].frame_size
      shape = (num_examples, mod.input_shape[0], size, size, 3)
      data[name] = jax.random.randint(k, shape, 0, 256, jnp.int32).astype(jnp.uint8)
    else:
      data[name] = jax.random.normal(k, (num_examples,) + tuple(mod.input_shape), jnp.float32)
  data["label"] = jax.random.randint(jax.random.fold_in(key, 99), (num_examples,), 0,
                                     num_classes)
  return data


def _tree_bytes(tree) -> int:
  import jax
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _peak_memory() -> tuple[float | None, str]:
  import jax
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20, "device peak"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"


def _flops(compiled) -> float | None:
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _jaxpr_flops(jaxpr) -> float:
  """2·MACs of every convolution and matmul in a (closed) jaxpr, recursively.

  XLA's own count skips library calls (cuDNN convolutions count as ~0 on the
  GPU), so the bench counts the model's FLOPs itself. Scans count `length`
  times; of a `cond`'s branches the cheapest counts (the step's probe refresh
  runs every `eval_freq` steps, so this is the FLOPs of an ordinary step).
  """
  import numpy as np
  from jax.extend import core
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      lhs, rhs = (v.aval for v in eqn.invars[:2])
      out = eqn.outvars[0].aval
      dims = eqn.params["dimension_numbers"]
      kernel_spatial = np.prod([rhs.shape[i] for i in dims.rhs_spec[2:]])
      in_features = rhs.shape[dims.rhs_spec[1]]
      total += 2.0 * np.prod(out.shape) * kernel_spatial * in_features
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
          [lhs.shape[i] for i in lhs_contract])
    elif name == "cond":
      total += min(_jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
    elif name == "scan":
      total += eqn.params["length"] * _jaxpr_flops(eqn.params["jaxpr"].jaxpr)
    else:
      for param in eqn.params.values():
        for sub in (param if isinstance(param, (list, tuple)) else (param,)):
          if isinstance(sub, core.ClosedJaxpr):
            total += _jaxpr_flops(sub.jaxpr)
          elif isinstance(sub, core.Jaxpr):
            total += _jaxpr_flops(sub)
  return total


def _time_windows(run_steps, steps: int, windows: int) -> list[float]:
  times = []
  for _ in range(windows):
    start = time.perf_counter()
    run_steps(steps)
    times.append((time.perf_counter() - start) / steps)
  return times


def _method_config(base, method: str):
  from configs.variants import apply_variant
  config = base.copy_and_resolve_references()
  apply_variant(config, method)
  if method.removesuffix("_seedcode") == "staleness":
    config.method.staleness.tau = _TAU.value
  return config


def bench_row(config, num_classes: int, seeds: int) -> dict:
  import jax
  import jax.numpy as jnp
  from asgml_jax import augment, input_pipeline, loop, programs
  from asgml_jax.plan import Plan

  if not (config.dataset.raw_dir or config.dataset.data_dir):
    # Real-data configs must name where their data are; the bench reads none.
    config.dataset.data_dir = "(bench: random data, nothing is read)"
  if config.dataset.name == "mmsa" and not config.dataset.mmsa.file:
    config.dataset.mmsa.file = "(bench: random data, nothing is read)"
  plan = Plan.build(config)
  config = plan.config
  batch = config.batch_size
  steps_per_epoch = max(_STEPS.value, 4)
  num_examples = batch * steps_per_epoch
  data = random_train_data(config, num_examples, num_classes, jax.random.PRNGKey(0))
  frame_sizes = augment.frame_modalities(config)
  example = augment.eval_inputs(input_pipeline.gather_batch(data, jnp.arange(batch), 0, batch),
                                frame_sizes)
  model = plan.model(num_classes)
  tx = plan.optimizer(steps_per_epoch, num_classes)
  parts = plan.step_parts(steps_per_epoch, num_classes)
  probe_cfg = plan.probe_config(num_classes)
  setup = loop.RunSetup(plan=plan, data=None, steps_per_epoch=steps_per_epoch, model=model,
                        tx=tx, parts=parts, probe_cfg=probe_cfg, example=example,
                        frame_sizes=frame_sizes)
  state = loop.fresh_state(setup, config.seed)
  body, collection = programs.make_train_body(model, tx, parts, config, steps_per_epoch, state,
                                              example, probe_cfg, coded=plan.resamples)
  perm = input_pipeline.epoch_permutation(jax.random.PRNGKey(1), 0, num_examples)
  row = {"method": plan.identity.label,
         "batch_size": batch, "compute_dtype": str(model.dtype.__name__ if hasattr(
             model.dtype, "__name__") else model.dtype)}
  if config.method.name == "staleness":
    tau = config.method.staleness.tau
    stale = [m.strip() for m in config.method.staleness.modalities.split(",") if m.strip()]
    buffers = jax.tree_util.tree_leaves(
        [s.buffers for s in jax.tree_util.tree_leaves(
            state.opt_state, is_leaf=lambda x: hasattr(x, "buffers"))
         if hasattr(s, "buffers")])
    row["staleness_buffer_mib"] = sum(x.size * x.dtype.itemsize for x in buffers) / 2**20
    row["tau_copies_of_stale_grads_mib"] = tau * sum(
        _tree_bytes(state.params["encoders"][m]) for m in stale) / 2**20

  def measure(fn, args, per_seed: int) -> dict:
    from asgml_jax import compile_cache
    cache = compile_cache.CompileReport()
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=programs.donated_args(0, 1)).lower(*args, 0).compile()
    compile_s = time.perf_counter() - start
    counts = cache.counts()
    carry = [args[0], args[1]]

    def run_steps(n):
      for i in range(n):
        carry[0], carry[1] = compiled(carry[0], carry[1], args[2], args[3], i % steps_per_epoch)
      jax.block_until_ready(carry[0])

    run_steps(_WARMUP.value)
    windows = _time_windows(run_steps, _STEPS.value, _WINDOWS.value)
    step_s = statistics.median(windows)
    flops = _jaxpr_flops(jax.make_jaxpr(fn)(*args, 0).jaxpr) or _flops(compiled)
    profile = {}
    if _PROFILE_STEPS.value and per_seed == 1:
      from launch import op_profile
      profile["profile"] = op_profile.profile_ops(run_steps, _PROFILE_STEPS.value,
                                                  compiled.as_text())
    return {**profile, "compile_s": compile_s,
            # the step program came from the persistent compilation cache: compile_s is a load
            "compile_loaded_from_cache": counts["requests"] > 0 and
                                         counts["hits"] == counts["requests"],
            "step_ms": step_s * 1e3,
            "window_step_ms": [w * 1e3 for w in windows], "steps_per_s": 1 / step_s,
            "examples_per_s": per_seed * batch / step_s,
            "gflop_per_step": flops / 1e9 if flops else None,
            "achieved_tflop_per_s": flops / step_s / 1e12 if flops else None}

  row.update(measure(body, (state, programs.fresh_metrics(collection), data, perm), 1))
  row["peak_memory_mib"], row["memory_kind"] = _peak_memory()
  if seeds > 1:
    mode = programs.seed_axis_mode(config, seeds, _SEED_AXIS.value)
    axis = programs.SeedAxis(mode, seeds)
    states = axis.stack([loop.fresh_state(setup, config.seed + s) for s in range(seeds)])
    fn, _, sweep_collection = programs.make_programs(
        axis, model, tx, parts, config, steps_per_epoch, state, example, probe_cfg,
        config.eval_batch_size, frame_sizes, True, coded=plan.resamples)
    perms = jnp.stack([perm] * seeds)
    swept = measure(fn.__wrapped__ if hasattr(fn, "__wrapped__") else fn,
                    (states, axis.empty_metrics(sweep_collection), data, perms), seeds)
    row["seeds"] = {"S": seeds, "mode": mode, "step_ms": swept["step_ms"],
                    "compile_s": swept["compile_s"],
                    "per_seed_step_ms": swept["step_ms"] / seeds,
                    "speedup_vs_one_seed": row["step_ms"] * seeds / swept["step_ms"]}
  return row


def _steady_epoch_seconds(workdir: str, key: str = "seconds") -> float:
  """Median epoch time after the first (which holds the compilation)."""
  from asgml_jax.report import eval_history
  history = eval_history(workdir)
  return statistics.median(h[key] for h in history[1:])


def whole_runs(config, seeds: list[int], epochs: int, workdir: str) -> dict:
  """Seeds per hour of S sequential runs vs one S-seed sweep (see the docstring)."""
  from asgml_jax import programs, sweep, train
  from asgml_jax.plan import with_seed
  if epochs < 2:
    raise app.UsageError("--whole_runs: at least 2 epochs (the first holds the compilation)")
  target_epochs = config.num_epochs
  config = config.copy_and_resolve_references()
  config.num_epochs = epochs
  start = time.perf_counter()
  for s in seeds:
    train.train_and_evaluate(with_seed(config, s), f"{workdir}/one_{s}")
  sequential_s = time.perf_counter() - start
  sequential_epoch_s = sum(_steady_epoch_seconds(f"{workdir}/one_{s}") for s in seeds)
  start = time.perf_counter()
  sweep.train_sweep(config, seeds, [f"{workdir}/sweep_{s}" for s in seeds],
                    seed_axis=_SEED_AXIS.value)
  sweep_s = time.perf_counter() - start
  sweep_epoch_s = _steady_epoch_seconds(f"{workdir}/sweep_{seeds[0]}", "sweep_seconds")
  project = lambda total, epoch_s: total + (target_epochs - epochs) * epoch_s
  seq_full, sweep_full = project(sequential_s, sequential_epoch_s), project(sweep_s, sweep_epoch_s)
  return {"seeds": seeds, "epochs_measured": epochs, "epochs_projected": target_epochs,
          "seed_axis": programs.seed_axis_mode(config, len(seeds), _SEED_AXIS.value),
          "sequential": {"measured_s": sequential_s, "steady_epoch_s": sequential_epoch_s,
                         "projected_s": seq_full,
                         "seeds_per_hour": 3600 * len(seeds) / seq_full},
          "sweep": {"measured_s": sweep_s, "steady_epoch_s": sweep_epoch_s,
                    "projected_s": sweep_full, "seeds_per_hour": 3600 * len(seeds) / sweep_full},
          "measured_ratio": sequential_s / sweep_s, "projected_ratio": seq_full / sweep_full}


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import jax
  from launch import cli
  cli.compilation_cache()
  base = _CONFIG.value
  num_classes = _num_classes(base)
  device = jax.local_devices()[0]
  header = {"config": config_flags.get_config_filename(flags.FLAGS["config"]),
            "dataset": base.dataset.name, "device": f"{device.platform}: {device.device_kind}",
            "device_count": jax.local_device_count(), "jax": jax.__version__,
            "host": platform.processor() or platform.machine(), "steps_per_window": _STEPS.value,
            "windows": _WINDOWS.value}
  print(json.dumps(header), flush=True)
  if _WHOLE_RUNS.value:
    import tempfile
    seeds = list(range(_SEEDS.value or 5))
    with tempfile.TemporaryDirectory() as workdir:
      result = whole_runs(base, seeds, _WHOLE_RUNS.value, workdir)
    for kind in ("sequential", "sweep"):
      r = result[kind]
      print(f"{kind:<10} {len(seeds)} seeds x {result['epochs_measured']} epochs: "
            f"{r['measured_s']:.1f} s; steady epoch {r['steady_epoch_s']:.2f} s; projected to "
            f"{result['epochs_projected']} epochs {r['projected_s']:.0f} s = "
            f"{r['seeds_per_hour']:.1f} seeds/hour", flush=True)
    print(f"sweep / sequential seeds per hour: x{result['measured_ratio']:.2f} measured, "
          f"x{result['projected_ratio']:.2f} projected", flush=True)
    if _OUT.value:
      with open(_OUT.value, "w") as f:
        json.dump({**header, "whole_runs": result}, f, indent=2)
    return
  rows = []
  for method in _METHODS.value:
    row = bench_row(_method_config(base, method), num_classes, _SEEDS.value)
    rows.append(row)
    base_ms = rows[0]["step_ms"]
    row["ratio_to_first"] = row["step_ms"] / base_ms
    seeds = row.get("seeds")
    loaded = " (loaded)" if row.get("compile_loaded_from_cache") else ""
    print(f"{row['method']:<12} {row['compute_dtype']:<9} compile {row['compile_s']:6.1f}s{loaded}  "
          f"step {row['step_ms']:9.2f} ms  {row['steps_per_s']:8.2f} steps/s  "
          f"{row['examples_per_s']:9.0f} ex/s  x{row['ratio_to_first']:.3f} of {rows[0]['method']}"
          f"  {_fmt(row['gflop_per_step'], '.1f')} GFLOP  "
          f"{_fmt(row['achieved_tflop_per_s'], '.2f')} TFLOP/s  "
          f"{row['memory_kind']} {row['peak_memory_mib']:.0f} MiB"
          + (f"  buffers {row['staleness_buffer_mib']:.2f} MiB (tau copies "
             f"{row['tau_copies_of_stale_grads_mib']:.2f})" if "staleness_buffer_mib" in row
             else "")
          + (f"  | {seeds['S']} seeds ({seeds['mode']}): {seeds['per_seed_step_ms']:.2f} ms/seed,"
             f" x{seeds['speedup_vs_one_seed']:.2f} vs one" if seeds else ""), flush=True)
    if "profile" in row:
      from launch import op_profile
      print(op_profile.format_profile(row["profile"]), flush=True)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({**header, "rows": rows}, f, indent=2)
    print(f"wrote {_OUT.value}", file=sys.stderr)


if __name__ == "__main__":
  from launch import cli
  cli.run(main)
