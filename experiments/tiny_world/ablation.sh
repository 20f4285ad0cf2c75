#!/usr/bin/env bash
# The tiny world's ablation across methods: one Hydra sweep over the tiny presets
# (conf/experiment/tiny_*.yaml, drtune_tiny.yaml) x training seeds, each run evaluated against
# the base model on the 19 held-out prompts x EVAL_SEEDS seeds, then `python -m alignkit.report`
# (report.md, report.html in OUT_DIR): methods ranked by the judge, with paired bootstrap
# intervals between every two of them.
#   bash experiments/tiny_world/ablation.sh [OUT_DIR] [key=value ...]
#   PRESETS=tiny_rpo,tiny_ncp_dpo SEEDS=0 bash experiments/tiny_world/ablation.sh /tmp/ab
# Then the style-alignment task (style_ablation.sh) into OUT_DIR_style/<style> (beside OUT_DIR,
# whose report would otherwise take its runs in), at training seeds
# STYLE_SEEDS (default 0) and presets STYLE_PRESETS (default: the six pair methods); STYLES=
# (empty) skips it.
# Defaults (our choice, docs/tiny_world.md "Ablation across methods"): 3 training seeds and
# 32 evaluation seeds per prompt (608 paired comparisons per run): about 2 CPU-hours for the
# eight presets (SPO a third of it), 86 minutes of wall time as two single-thread sweeps side
# by side on a shared 2-core machine; the style task adds about 25 CPU-minutes.
set -euo pipefail
out=${1:-outputs/tiny_ablation}
shift || true
presets=${PRESETS:-tiny_dpo,tiny_sft,tiny_rpo,tiny_ncp_dpo,tiny_ncp_cpo,tiny_ncp_sft,tiny_spo,drtune_tiny}
seeds=${SEEDS:-0,1,2}
eval_seeds=${EVAL_SEEDS:-32}
python=${PYTHON:-python}
"$python" -m alignkit -m "experiment=$presets" "seed=$seeds" \
  "eval.seeds_per_prompt=$eval_seeds" "hydra.sweep.dir=$out" "$@"
"$python" -m alignkit.report "$out"
if [ -n "${STYLES-sketch,winter,stripes}" ]; then
  STYLES=${STYLES-sketch,winter,stripes} PRESETS="${STYLE_PRESETS:-}" PYTHON="$python" \
    bash "$(dirname "$0")/style_ablation.sh" "${out%/}_style" "seed=${STYLE_SEEDS:-0}"
fi
