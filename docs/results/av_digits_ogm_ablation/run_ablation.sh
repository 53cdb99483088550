#!/usr/bin/env bash
# The OGM-GE ablation on AV-Digits: 10 arms x 3 seeds (42, 0, 1) x 20 epochs, one
# seed sweep per arm, every step logged (the per-step OGM coefficients).
# Usage: bash docs/results/av_digits_ogm_ablation/run_ablation.sh <workdir>
# then:  python -m launch.report <workdir> --out <report dir>
#        python docs/results/av_digits_ogm_ablation/diagnose.py <workdir> <report dir>
set -euo pipefail
W=${1:?usage: run_ablation.sh <workdir>}
run() {  # variant label overrides...
  local v=$1 l=$2; shift 2
  python -m launch.sweep --config "configs/av_digits.py:$v" --workdir "$W" --seeds 42,0,1 \
    --config.label="$l" --config.log_every_steps=1 "$@"
}
run baseline baseline
run ogm_ge ogm_ge
run ogm ogm_no_ge
run ogm_ge ogm_ge_noise_dominant --config.method.ogm.noise_on=dominant
run ogm_ge ogm_ge_conv --config.method.ogm.leaves=conv
run ogm_ge ogm_ge_gamma0 --config.loss.unimodal_weight=0.0
run baseline baseline_gamma0 --config.loss.unimodal_weight=0.0
run ogm_ge ogm_ge_conv_gamma0 --config.method.ogm.leaves=conv --config.loss.unimodal_weight=0.0
run baseline baseline_lr_x0.65 --config.optimizer.learning_rate=0.00195
run ogm_ge ogm_ge_continuous --config.method.ogm.coefficient=continuous
