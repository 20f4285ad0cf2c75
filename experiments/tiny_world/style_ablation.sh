#!/usr/bin/env bash
# The tiny world's style-alignment ablation (docs/style_alignment.md): the preference-pair
# methods trained on style pairs (a styled render preferred over the render), one Hydra sweep
# over the methods per style into OUT_DIR/<style>, each run evaluated on the held-out prompts
# with the three styles' exact scores (the trained style's and, as controls, the other two)
# and the judge, then `python -m alignkit.report OUT_DIR/<style> --primary style_<style>`: the
# methods ranked by how strongly their samples take the style they were trained on.
#   bash experiments/tiny_world/style_ablation.sh [OUT_DIR] [key=value ...]
#   STYLES=winter PRESETS=tiny_dpo,tiny_rpo bash experiments/tiny_world/style_ablation.sh /tmp/st seed=0,1
# SPO and DRTune learn from prompts and a reward, not from pairs, so they are not in the sweep.
set -euo pipefail
out=${1:-outputs/tiny_style_ablation}
shift || true
presets=${PRESETS:-tiny_dpo,tiny_sft,tiny_rpo,tiny_ncp_dpo,tiny_ncp_cpo,tiny_ncp_sft}
styles=${STYLES:-sketch,winter,stripes}
python=${PYTHON:-python}
for style in ${styles//,/ }; do
  "$python" -m alignkit -m "experiment=$presets" data=tiny_style_pairs "data.style=$style" \
    'eval.rewards=[style_sketch,style_winter,style_stripes,oracle]' \
    "hydra.sweep.dir=$out/$style" "$@"
  "$python" -m alignkit.report "$out/$style" --primary "style_$style"
done
