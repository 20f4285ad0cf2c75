#!/usr/bin/env bash
# Train and evaluate Diffusion-RPO and NCP-DPO/CPO/SFT on the tiny world (CPU, minutes each),
# with the presets conf/experiment/tiny_<algo>.yaml; prints each run's judge win rate vs base.
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
  "$python" - "$algo" "$out/$algo/eval.json" <<'PY'
import json
import sys

judge = json.load(open(sys.argv[2]))["rewards"]["oracle"]
win = judge["win_rate"]
print(
    f"{sys.argv[1]:8s} judge base {judge['base']:.4f} aligned {judge['aligned']:.4f} "
    f"win rate {win['rate']:.1%} ({win['ci_low']:.1%}-{win['ci_high']:.1%}, n={win['n']})"
)
PY
done
