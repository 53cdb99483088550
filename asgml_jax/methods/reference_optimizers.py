"""Optimizers that several methods' references share (`method.reference_optimizer`).

BalanceBenchmark (GeWu-Lab/BalanceBenchmark) trains every trainer with one
global setting, whatever the dataset: configs/global_config.yaml builds
AdamW (lines 41-44: weight_decay 0.01) with lr `base_lr` 0.001 (line 29; line
30's `lr: -1` keeps it, balancemm/utils/optimizer.py:17), StepLR(step_size 10,
gamma 0.1) (lines 45-48) stepped after each epoch
(balancemm/trainer/base_trainer.py:260-261), 30 epochs (configs/
trainer_config.yaml:4 `max_epochs`) and batches of `eff_batch_size` 32 on one
device (global_config.yaml:4, balancemm/utils/data_utils.py:33). Its dataset
config (configs/dataset_config.yaml) names CREMAD, KineticsSounds and CMUMOSEI
among this library's datasets (AVE is not there).

The other repositories' scripts are each method's own (in its module).
"""

from __future__ import annotations

from asgml_jax.methods.base import ReferenceOptimizer, steplr_milestones

BALANCEBENCHMARK_ADAMW = ReferenceOptimizer(
    source="GeWu-Lab/BalanceBenchmark configs/global_config.yaml:4,27-48",
    kind="adamw", learning_rate=1e-3, weight_decay=0.01, num_epochs=30, batch_size=32,
    lr_milestones=steplr_milestones(10, 0.1, 30))

BALANCEBENCHMARK = {name: BALANCEBENCHMARK_ADAMW
                    for name in ("cremad", "kinetics_sounds", "mmsa")}
