"""The base optimizer equals PyTorch SGD by hand; the loss of SPEC §2; a golden step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asgml_jax import optim, steps
from conftest import jitted_step, tiny_config


def test_sgd_momentum_weight_decay_steplr_match_pytorch_by_hand():
  config = tiny_config("/tmp/unused")
  config.optimizer.update(dict(learning_rate=0.1, momentum=0.9, weight_decay=0.01,
                               lr_step_epochs=2, lr_decay=0.1))
  base = optim.base_optimizer(config, steps_per_epoch=1)
  tx, init = jax.jit(base.update), base.init
  theta = {"w": jnp.array([1.0, -2.0])}
  grads = [jnp.array([0.5, 0.25]), jnp.array([-1.0, 2.0]), jnp.array([0.1, 0.1])]
  state = init(theta)
  # PyTorch SGD: d = g + wd*θ; buf = d (t=0) else μ*buf + d; θ -= lr_t * buf.
  ref_theta, buf = np.array([1.0, -2.0]), None
  for t, g in enumerate(grads):
    updates, state = tx({"w": g}, state, theta, step=jnp.int32(t))
    theta = {"w": theta["w"] + updates["w"]}
    d = np.asarray(g) + 0.01 * ref_theta
    buf = d if buf is None else 0.9 * buf + d
    lr = 0.1 * (0.1 ** (t // 2))
    ref_theta = ref_theta - lr * buf
    np.testing.assert_allclose(theta["w"], ref_theta, rtol=1e-6)


def test_lr_schedule_is_steplr_in_epochs():
  config = tiny_config("/tmp/unused")
  config.optimizer.update(dict(learning_rate=1e-3, lr_step_epochs=40, lr_decay=0.1))
  schedule = optim.lr_schedule(config, steps_per_epoch=100)
  np.testing.assert_allclose([schedule(0), schedule(3999), schedule(4000), schedule(8000)],
                             [1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-6)


def test_multimodal_loss_is_fused_plus_gamma_times_gated_unimodal():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  uni = {"a": jnp.array([[1.0, 0.0], [0.0, 0.0]]), "b": jnp.array([[0.0, 3.0], [1.0, 0.0]])}
  labels = jnp.array([0, 1])
  ce = lambda z: float(np.mean([-jax.nn.log_softmax(z)[i, labels[i]] for i in range(2)]))
  gates = {"a": jnp.float32(1.0), "b": jnp.float32(0.0)}
  total, fused, unimodal = steps.multimodal_loss({"logits": logits, "unimodal_logits": uni},
                                                 {"label": labels}, 4.0, gates)
  np.testing.assert_allclose(fused, ce(logits), rtol=1e-6)
  np.testing.assert_allclose(unimodal["b"], ce(uni["b"]), rtol=1e-6)
  np.testing.assert_allclose(total, ce(logits) + 4.0 * ce(uni["a"]), rtol=1e-6)


def _golden_setup():
  return jitted_step(tiny_config("/tmp/unused"))


def test_golden_one_step_regression():
  """Loss, metrics and the parameter checksum after one step of the tiny model.

  Golden values recorded on CPU (jax 0.10.2); a change here means the model,
  the init, the loss or the optimizer changed: check which, then re-record.
  """
  state, step, batch = _golden_setup()
  new_state, metrics = step(state, batch)
  checksum = sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree.leaves(new_state.params))
  got = {"loss": float(metrics["loss"]), "fused_loss": float(metrics["fused_loss"]),
         "grad_norm_audio": float(metrics["grad_norm_audio"]),
         "grad_norm_visual": float(metrics["grad_norm_visual"]), "checksum": checksum}
  expected = GOLDEN
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=2e-4, err_msg=key)
  assert int(new_state.step) == 1
  assert int(new_state.health[0]) == -1


def test_nonfinite_step_leaves_state_untouched_and_names_the_culprit():
  state, step, batch = _golden_setup()
  bad = dict(batch, visual=batch["visual"].at[0, 0, 0, 0].set(jnp.nan))
  new_state, _ = step(state, bad)
  assert [int(x) for x in new_state.health] == [0, 0]  # step 0, the loss (NaN input)
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  # Later finite steps stay no-ops: the run is stopped, not silently continued.
  later, _ = step(new_state, batch)
  for a, b in zip(jax.tree.leaves(later.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  assert [int(x) for x in later.health] == [0, 0]


def _norms(grads):
  return {m: optax.global_norm(g) for m, g in grads["encoders"].items()}


def test_first_nonfinite_names_the_encoder():
  grads = {"encoders": {"audio": {"w": jnp.ones(3)}, "visual": {"w": jnp.array([1.0, jnp.inf])}},
           "fusion": {"w": jnp.ones(2)}}
  assert int(steps._first_nonfinite(jnp.float32(1.0), grads, _norms(grads))) == 2
  grads["encoders"]["visual"]["w"] = jnp.ones(2)
  assert int(steps._first_nonfinite(jnp.float32(1.0), grads, _norms(grads))) == -1
  grads["fusion"]["w"] = jnp.array([jnp.nan, 0.0])
  assert int(steps._first_nonfinite(jnp.float32(1.0), grads, _norms(grads))) == 3


GOLDEN = {"loss": 4.017786026000977, "fused_loss": 1.3205323219299316,
          "grad_norm_audio": 0.8817623853683472, "grad_norm_visual": 1.5540885925292969,
          "checksum": 457.8496891935356}
