#!/usr/bin/env bash
# The per-task tables in docs/training.md: examples/multitask.yaml on the default backbone, each task
# alone and all three together, heads-only and LoRA. Usage: scripts/train_evidence.sh heads|lora OUT_DIR
# (the two modes can run side by side). Each run: one torch thread (fastest on a busy 2-core machine),
# evaluation at the end only (so the best checkpoint is the last one), the config's other settings.
set -euo pipefail
mode=$1; out=$2
steps=${STEPS:-$([ "$mode" = heads ] && echo 40 || echo 24)}
python=${PYTHON:-python}
mkdir -p "$out"
for tasks in sentiment topic ner sentiment,topic,ner; do
  name="$mode-${tasks//,/+}"
  start=$(date +%s)
  "$python" -m polyhead.cli train examples/multitask.yaml --mode "$mode" --tasks "$tasks" --steps "$steps" \
    --eval-every 0 --threads 1 --no-progress --output-dir "$out/$name" > "$out/$name.log" 2>&1
  echo "$name total_wall_s=$(( $(date +%s) - start ))" | tee -a "$out/walltimes.txt"
done
