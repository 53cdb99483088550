"""`method.reference_optimizer`: each reference script's optimizer, learning-rate
schedule, epochs and batch size, transcribed from the script itself (file:line
beside each case), and PyTorch's Adam/AdamW by hand.

The schedules are checked as PyTorch computes them: after k calls of
`scheduler.step()`, StepLR(step, γ) gives lr0·γ^(k // step) and MultiStepLR(ms, γ)
lr0·γ^#{m ∈ ms : m ≤ k} (torch/optim/lr_scheduler.py, `_get_closed_form_lr`);
a script that calls `scheduler.step()` after an epoch's batches trains epoch e
after e calls, one that calls it before them after e + 1 calls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asgml_jax import optim
from asgml_jax.config_checks import ConfigError, set_dotted
from asgml_jax.plan import Plan, teacher_config
from conftest import jitted_step, tiny_mlp_config


def _torch_lr(spec: dict, epoch: int) -> float:
  """The learning rate a reference script trains epoch `epoch` with."""
  kind, *args = spec["scheduler"]
  if kind == "none":
    return spec["lr"]
  if kind == "two_stage_StepLR":        # two scripts, a fresh scheduler for the second
    first_epochs, step, gamma = args
    k = epoch if epoch < first_epochs else epoch - first_epochs
    return spec["lr"] * gamma ** (k // step)
  *params, when = args
  k = epoch + (1 if when == "before" else 0)
  if kind == "StepLR":
    step, gamma = params
    return spec["lr"] * gamma ** (k // step)
  milestones, gamma = params                                     # MultiStepLR
  return spec["lr"] * gamma ** sum(k >= m for m in milestones)


# (variant, dataset config module, the reference script's values)
CASES = {
    # Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation README.md:62
    # (--batch_size 64 --epochs 100), main.py:31-34 (sgd, lr 0.001, step 70, ratio 0.1),
    # :749 SGD(momentum=0.9, weight_decay=1e-4), :760 StepLR, :481 step after the batches.
    "mla": ("cremad", dict(kind="sgd", lr=1e-3, momentum=0.9, wd=1e-4, epochs=100, batch=64,
                           scheduler=("StepLR", 70, 0.1, "after"))),
    # GeWu-Lab/MMCosine_ICASSP23 main_CD.py:60-66 (batch 32, epochs 200, sgd, lr 0.001,
    # step 100, ratio 0.1), :262 SGD(momentum=0.9, weight_decay=1e-4), :265, :310 (after).
    "mmcosine": ("cremad", dict(kind="sgd", lr=1e-3, momentum=0.9, wd=1e-4, epochs=200,
                                batch=32, scheduler=("StepLR", 100, 0.1, "after"))),
    # GeWu-Lab/Diagnosing_Relearning_ECCV2024 code/script/ours.sh:10 (--epochs 90),
    # code/ours.py:34 (batch 64), :38 (lr 0.002), :368 SGD(momentum=0.9, weight_decay=1e-4);
    # no scheduler is built in ours.py.
    "relearning": ("cremad", dict(kind="sgd", lr=2e-3, momentum=0.9, wd=1e-4, epochs=90,
                                  batch=64, scheduler=("none",))),
    # fanyunfeng-bit/DI-MML main_CFT.py:26-27 (batch 16, epochs 150), :32-34 (lr 0.001,
    # step 70, ratio 0.1), :250-251, :103 (after); main_CFT_stage2.py:27,29 (batch 16,
    # epochs 20), :33-35, :284-286 (a fresh SGD + StepLR), :120 (after).
    "di_mml": ("cremad", dict(kind="sgd", lr=1e-3, momentum=0.9, wd=1e-4, epochs=170, batch=16,
                              scheduler=("two_stage_StepLR", 150, 70, 0.1))),
    # njustkmg/IJCAI25-IPRM README.md:8 (--batch_size 64 --epoch 100), main_av.py:34-36 (lr
    # 0.01, step 70, ratio 0.1), :240 SGD(momentum=0.9, weight_decay=1e-4), :245, :155 (after).
    "iprm": ("cremad", dict(kind="sgd", lr=1e-2, momentum=0.9, wd=1e-4, epochs=100, batch=64,
                            scheduler=("StepLR", 70, 0.1, "after"))),
    # njustkmg/NeurIPS25-AUG data/crema.json:16-17 (epoch_dict 200, batch 64), :24-29 (SGD,
    # momentum 0.9, lr 1e-2, wc 1e-4), :35 (patience 70); train_CREMAD.py:202 StepLR(opt,
    # patience, 0.1); :210-212 `scheduler.step()` before `train_audio_video`.
    "aug": ("cremad", dict(kind="sgd", lr=1e-2, momentum=0.9, wd=1e-4, epochs=200, batch=64,
                           scheduler=("StepLR", 70, 0.1, "before"))),
    # rAIson-Lab/G2D config.py:36-43 (batch 16, epochs 300, step 200, lr 0.001, ratio 0.1,
    # sgd, weight_decay 1e-4), student.py:249 SGD(momentum=0.9), :252 StepLR, :310 (after).
    "g2d": ("cremad", dict(kind="sgd", lr=1e-3, momentum=0.9, wd=1e-4, epochs=300, batch=16,
                           scheduler=("StepLR", 200, 0.1, "after"))),
    # shicaiwei123/ICCV2025-GDL cramed_dgl.sh:9 (--learning_rate 0.002), main_dgl.py:40-41
    # (batch 64, epochs 100), :45-46 (lr_decay_step '[70]', ratio 0.1), :249 SGD(momentum=0.9,
    # weight_decay=1e-4), :250 MultiStepLR, :72-74 `scheduler.step()` first in train_epoch.
    "dgl": ("cremad", dict(kind="sgd", lr=2e-3, momentum=0.9, wd=1e-4, epochs=100, batch=64,
                           scheduler=("MultiStepLR", (70,), 0.1, "before"))),
    # GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation code/sample_level.py:34 (KineticSound),
    # :41-42 (batch 64, epochs 60), :50-58 (adam, lr 5e-05, step 30, ratio 0.1), :287-294
    # Adam(betas=(0.9, 0.999), eps=1e-08, weight_decay=1e-4), :296-298, :340 (after).
    "valuation": ("kinetics_sounds", dict(kind="adam", lr=5e-5, wd=1e-4, epochs=60, batch=64,
                                          scheduler=("StepLR", 30, 0.1, "after"))),
    # GeWu-Lab/OGM-GE_CVPR2022 main.py:33-39 (batch 64, epochs 100, sgd, lr 0.001, step 70,
    # ratio 0.1), :246 SGD(momentum=0.9, weight_decay=1e-4), :247, :159 (after).
    "ogm_ge": ("ave", dict(kind="sgd", lr=1e-3, momentum=0.9, wd=1e-4, epochs=100, batch=64,
                           scheduler=("StepLR", 70, 0.1, "after"))),
    # GeWu-Lab/BalanceBenchmark configs/global_config.yaml:4 (eff_batch_size 32), :27
    # (total_epoch 30), :29-30 (base_lr 0.001, lr -1), :42-44 (AdamW, weight_decay 0.01),
    # :46-48 (StepLR, step_size 10, gamma 0.1); balancemm/trainer/base_trainer.py:260-261
    # (after the epoch); configs/trainer_config.yaml:4 (max_epochs 30).
    "amco": ("kinetics_sounds", dict(kind="adamw", lr=1e-3, wd=0.01, epochs=30, batch=32,
                                     scheduler=("StepLR", 10, 0.1, "after"))),
}


def _reference_plan(variant: str, dataset: str, **settings):
  module = __import__(f"configs.{dataset}", fromlist=["get_config"])
  config = module.get_config(variant)
  with config.unlocked():
    config.dataset.raw_dir = "/tmp/unused_raw"
    config.method.reference_optimizer = True
    for key, value in settings.items():
      set_dotted(config, key, value)
  return Plan.build(config)


@pytest.mark.parametrize("variant", sorted(CASES))
def test_reference_optimizer_is_the_scripts_own(variant):
  dataset, ref = CASES[variant]
  config = _reference_plan(variant, dataset).config
  assert config.optimizer.kind == ref["kind"]
  assert (config.num_epochs, config.batch_size) == (ref["epochs"], ref["batch"])
  np.testing.assert_allclose(config.optimizer.weight_decay, ref["wd"], rtol=1e-12)
  if ref["kind"] == "sgd":
    assert config.optimizer.momentum == ref["momentum"]
  spe = 3
  schedule = optim.lr_schedule(config, spe)
  for epoch in range(ref["epochs"]):
    for step in (epoch * spe, epoch * spe + spe - 1):
      np.testing.assert_allclose(float(schedule(step)), _torch_lr(ref, epoch), rtol=1e-5,
                                 err_msg=f"{variant}: epoch {epoch}")


def test_di_mml_restarts_the_learning_rate_where_its_stage_2_starts():
  from asgml_jax.methods.di_mml import schedule as di_mml_stages
  assert di_mml_stages(_reference_plan("di_mml", "cremad").config)[0] == 150
  with pytest.raises(ConfigError, match="^config.method.di_mml.fusion_epochs: the reference "):
    _reference_plan("di_mml", "cremad", **{"method.di_mml.fusion_epochs": 30})


def test_lfm_follows_the_code_its_run_follows():
  # njustkmg/NeurIPS24-LFM data/crema.json:16-35 (200 epochs, batch 64, SGD momentum 0.9,
  # lr 1e-2, wc 1e-4, patience 70), Crema_epoch_learnable.py:248 StepLR(opt, patience, 0.1),
  # :252-255 `scheduler.step()` before `train_audio_video`.
  neurips = _reference_plan("lfm", "cremad", **{"method.protocol": "reference"}).config
  ref = dict(lr=1e-2, scheduler=("StepLR", 70, 0.1, "before"))
  assert (neurips.optimizer.kind, neurips.num_epochs, neurips.batch_size) == ("sgd", 200, 64)
  schedule = optim.lr_schedule(neurips, 1)
  for epoch in (0, 68, 69, 138, 139, 199):
    np.testing.assert_allclose(float(schedule(epoch)), _torch_lr(ref, epoch), rtol=1e-5)
  balancebenchmark = _reference_plan("lfm", "cremad").config       # code=balancebenchmark
  assert (balancebenchmark.optimizer.kind, balancebenchmark.num_epochs) == ("adamw", 30)


def test_a_teacher_trains_with_its_students_reference_optimizer():
  plan = _reference_plan("g2d", "cremad")
  teacher = Plan.build(teacher_config(plan.config, "audio")).config
  assert teacher.method.reference_optimizer is False
  for key in ("kind", "learning_rate", "weight_decay", "schedule", "lr_piecewise"):
    assert teacher.optimizer[key] == plan.config.optimizer[key]
  assert (teacher.num_epochs, teacher.batch_size) == (300, 16)


@pytest.mark.parametrize("variant,dataset,settings,message", [
    ("baseline", "cremad", {}, "the baseline has no reference script"),
    ("pmr", "cremad", {}, "pmr's reference names no optimizer"),
    ("dgl", "ave", {}, "dgl's reference (shicaiwei123/ICCV2025-GDL) names no optimizer for "
                       "dataset ave (its scripts train cremad, kinetics_sounds)"),
    ("ogm_ge", "cremad", {"method.stack": "ogm_ge,dgl"},
     "ogm_ge and dgl cannot stack: their references train cremad differently"),
])
def test_a_reference_optimizer_that_is_not_written_is_refused(variant, dataset, settings,
                                                              message):
  with pytest.raises(ConfigError, match="^config.method.reference_optimizer: ") as err:
    _reference_plan(variant, dataset, **settings)
  assert message in str(err.value) and "\n" not in str(err.value)


def test_methods_of_one_reference_stack():
  config = _reference_plan("amco", "cremad", **{"method.stack": "amco,umt"}).config
  assert (config.optimizer.kind, config.num_epochs, config.batch_size) == ("adamw", 30, 32)


def test_piecewise_factors_without_the_piecewise_schedule_are_refused():
  config = tiny_mlp_config("/tmp/unused")
  config.optimizer.lr_piecewise = "70:0.1"
  with pytest.raises(ConfigError, match="^config.optimizer.lr_piecewise: is read only with "):
    Plan.build(config)


@pytest.mark.parametrize("text", ["70", "0:0.1", "70:0", "70:x", "70:0.1,70:0.5"])
def test_a_bad_piecewise_schedule_is_one_line(text):
  config = tiny_mlp_config("/tmp/unused")
  config.optimizer.schedule = "piecewise"
  config.optimizer.lr_piecewise = text
  with pytest.raises(ConfigError, match="^config.optimizer.lr_piecewise: "):
    Plan.build(config)


def _torch_adam(theta, grads, lrs, wd, decoupled):
  """torch.optim.Adam / AdamW (torch/optim/adam.py `_single_tensor_adam`,
  adamw.py): betas (0.9, 0.999), eps 1e-8; Adam adds wd·θ to the gradient, AdamW
  multiplies θ by 1 − lr·wd first; then m, v, bias corrections, θ −= lr·m̂/(√v̂ + eps)."""
  b1, b2, eps = 0.9, 0.999, 1e-8
  theta = np.array(theta, np.float64)
  m = v = np.zeros_like(theta)
  for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
    g = np.asarray(g, np.float64)
    if decoupled:
      theta = theta * (1 - lr * wd)
    else:
      g = g + wd * theta
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
    theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
  return theta


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_adam_and_adamw_match_pytorch_by_hand(kind):
  config = tiny_mlp_config("/tmp/unused")
  config.optimizer.update(dict(kind=kind, learning_rate=0.1, weight_decay=0.05,
                               schedule="piecewise", lr_piecewise="2:0.5"))
  base = optim.base_optimizer(config, steps_per_epoch=1)
  theta = {"w": jnp.array([1.0, -2.0, 0.5])}
  grads = [[0.5, 0.25, -1.0], [-1.0, 2.0, 0.0], [0.1, 0.1, 0.3], [0.2, -0.4, 0.05]]
  state, update = base.init(theta), jax.jit(base.update)
  for t, g in enumerate(grads):
    updates, state = update({"w": jnp.array(g)}, state, theta, step=jnp.int32(t))
    theta = {"w": theta["w"] + updates["w"]}
  lrs = [0.1, 0.1, 0.05, 0.05]
  np.testing.assert_allclose(theta["w"], _torch_adam([1.0, -2.0, 0.5], grads, lrs, 0.05,
                                                     kind == "adamw"), rtol=2e-6, atol=1e-7)


def test_adamw_runs_in_the_whole_chain():
  """Through the train step's whole chain, AdamW's first step moves each
  parameter by lr·|g|/(|g| + eps) ≤ lr after its decoupled decay (Adam's m̂/√v̂ =
  g/|g| at t = 1), which no SGD step does."""
  config = tiny_mlp_config("/tmp/unused")
  config.optimizer.update(dict(kind="adamw", learning_rate=0.01, weight_decay=0.1))
  state, step, batch = jitted_step(config)
  new_state, _ = step(state, batch)
  moved = jax.tree.map(lambda new, old: np.abs(np.asarray(new - old * (1 - 0.01 * 0.1))),
                       new_state.params, state.params)
  largest = max(float(x.max()) for x in jax.tree.leaves(moved))
  assert largest <= 0.01 * (1 + 1e-4)
  assert largest > 0.01 * 0.99
