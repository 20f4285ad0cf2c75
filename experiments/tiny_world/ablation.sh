#!/usr/bin/env bash
# The tiny world's ablation across methods: one Hydra sweep over the tiny presets
# (conf/experiment/tiny_*.yaml, drtune_tiny.yaml; about 17 minutes for all eight on 2 CPU
# cores), each run evaluated against the base model on the held-out prompts, then
# `python -m alignkit.report` (report.md, report.html in OUT_DIR).
#   bash experiments/tiny_world/ablation.sh [OUT_DIR] [key=value ...]
#   PRESETS=tiny_rpo,tiny_ncp_dpo bash experiments/tiny_world/ablation.sh /tmp/ab seed=0,1
set -euo pipefail
out=${1:-outputs/tiny_ablation}
shift || true
presets=${PRESETS:-tiny_dpo,tiny_sft,tiny_rpo,tiny_ncp_dpo,tiny_ncp_cpo,tiny_ncp_sft,tiny_spo,drtune_tiny}
python=${PYTHON:-python}
"$python" -m alignkit -m "experiment=$presets" "hydra.sweep.dir=$out" "$@"
"$python" -m alignkit.report "$out"
