#!/usr/bin/env bash
# Train and evaluate Diffusion-RPO and NCP-DPO/CPO/SFT on the tiny world (CPU, minutes each),
# with the presets conf/experiment/tiny_<algo>.yaml; prints each run's evaluation table (judge,
# tiny CLIP, tiny PickScore: base, aligned, win rate vs base with its CI).
#   bash experiments/tiny_world/rpo_ncp.sh [OUT_DIR] [key=value ...]
# e.g. bash experiments/tiny_world/rpo_ncp.sh /tmp/tiny trainer.max_steps=50 seed=1
set -euo pipefail
out=${1:-outputs/tiny_rpo_ncp}
shift || true
python=${PYTHON:-python}
for algo in rpo ncp_dpo ncp_cpo ncp_sft; do
  "$python" -m alignkit "experiment=tiny_$algo" "output_dir=$out/$algo" "$@"
done
for algo in rpo ncp_dpo ncp_cpo ncp_sft; do
  echo "## $algo"
  "$python" -c 'import json, sys
from alignkit.evaluation import results_table
print(results_table(json.load(open(sys.argv[1]))))' "$out/$algo/eval.json"
done
