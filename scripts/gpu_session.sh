#!/usr/bin/env bash
# One GPU lease, one command: the 7B-shaped benchmark (#7), then stage-2 training of the embedded model on the
# GPU in three variants side by side (#6; the tiny model leaves the GPU mostly idle, so they share it), plus a
# short stage-1 run proving that stage trains on CUDA too. Everything it produces lands in $OUT (or build/gpu).
#
#   scripts/gpu_session.sh BUNDLE            # BUNDLE: run dir with config.json, tokenizer/ and init.pt
#
# Needs python3 with torch (CUDA), transformers, sentencepiece, scipy, opencv, safetensors, tqdm, pyyaml.
set -u
BUNDLE=${1:?usage: gpu_session.sh BUNDLE}
OUT=${OUT:-build/gpu}
MINUTES=${GPU_TRAIN_MINUTES:-4.5}
DEVICE=${GPU_DEVICE:-cuda}  # GPU_DEVICE=cpu GPU_SKIP_7B=1 GPU_SCENES=32 GPU_TRAIN_MINUTES=0.2: a local dry run
SCENES=${GPU_SCENES:-8000}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
log="$OUT/device.log"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c \
  "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
  >"$log" 2>&1

echo "== gpu_7b --tiny on $DEVICE (smoke)" >>"$log"
timeout 120 python3 benchmarks/gpu_7b.py --tiny --device "$DEVICE" >"$OUT/gpu_7b_tiny.json" 2>>"$log"
echo "rc=$?" >>"$log"
if [ "${GPU_SKIP_7B:-0}" != 1 ]; then
  echo "== gpu_7b (7B-shaped, bf16)" >>"$log"
  timeout 240 python3 benchmarks/gpu_7b.py >"$OUT/gpu_7b.json" 2>>"$log"
  echo "rc=$?" >>"$log"
fi

base='"batch_size": 64, "scenes_per_batch": 16, "lr": 5e-4, "min_lr": 5e-5, "warmup_steps": 50, "curriculum_steps": 0'
declare -A variants=(
  [A]="{$base}"
  [B]="{$base, \"anchor_layers\": [1]}"
  [C]="{$base, \"anchor_layers\": [1], \"task_weights\": {\"refer\": 0.42, \"refer_multi\": 0.08, \"grounded_caption\": 0.25, \"region_qa\": 0.13, \"vqa\": 0.12}}"
)
pids=()
for v in A B C; do
  run="build/gpu_run_$v"; rm -rf "$run"; mkdir -p "$run"
  cp -r "$BUNDLE/config.json" "$BUNDLE/tokenizer" "$run/"
  timeout 420 python3 -m groma_ros.train --run-dir "$run" --stages 2 --device "$DEVICE" --stage2-init "$BUNDLE/init.pt" \
    --stage2-scenes "$SCENES" --stage2-minutes "$MINUTES" --eval-minutes 1.5 --export "$run/export" \
    --stage2-set "${variants[$v]}" >"$run/train.log" 2>&1 &
  pids+=($!)
done
s1="build/gpu_run_stage1"; rm -rf "$s1"
timeout 300 python3 -m groma_ros.train --run-dir "$s1" --stages 0,1 --device "$DEVICE" --corpus-scenes 200 \
  --stage1-minutes 0.5 --export '' >"$OUT/stage1_smoke.log" 2>&1
echo "stage1 smoke rc=$?" >>"$log"
for p in "${pids[@]}"; do wait "$p"; echo "train rc=$?" >>"$log"; done
for v in A B C; do
  run="build/gpu_run_$v"
  tar -czf "$OUT/train_$v.tgz" -C "$run" export log.jsonl train.log 2>>"$log" || \
    tar -czf "$OUT/train_$v.tgz" -C "$run" log.jsonl train.log
done
date -u >>"$log"
