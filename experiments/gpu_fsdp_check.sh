#!/usr/bin/env bash
# FSDP2 on a GPU, the check a CPU cannot make (accelerate runs plain DDP on gloo): full
# fine-tuning of the tiny SD1.5-shaped model under experiments/accelerate/fsdp_full_shard.yaml,
# 4 steps straight and 2 + 2 with a resume in between; the two final UNets must be equal.
#   bash experiments/gpu_fsdp_check.sh [OUT_DIR] [NUM_GPUS]   (one GPU is enough; ~2 minutes)
set -euo pipefail
out=${1:-/tmp/fsdp_check}
gpus=${2:-1}
python=${PYTHON:-python}
rm -rf "$out"
job=(model=tiny_sd model.finetune=full data=tiny_pairs trainer.batch_size=2
     trainer.mixed_precision=bf16 trainer.checkpoint_every=2 trainer.progress_bar=false
     eval.enabled=false)
launch=(accelerate launch --config_file experiments/accelerate/fsdp_full_shard.yaml
        --num_processes "$gpus" -m alignkit)
"${launch[@]}" "${job[@]}" trainer.max_steps=4 "output_dir=$out/straight"
"${launch[@]}" "${job[@]}" trainer.max_steps=2 "output_dir=$out/resumed"
"${launch[@]}" "${job[@]}" trainer.max_steps=4 "output_dir=$out/resumed"
"$python" - "$out" <<'PY'
import sys
from pathlib import Path

from safetensors.torch import load_file

root = Path(sys.argv[1])
a = load_file(str(next((root / "straight/final/unet").glob("*.safetensors"))))
b = load_file(str(next((root / "resumed/final/unet").glob("*.safetensors"))))
assert a.keys() == b.keys(), "the two final UNets hold different tensors"
worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"FSDP straight vs resumed: {len(a)} tensors, largest difference {worst:.3g}")
sys.exit(0 if worst == 0 else 1)
PY
