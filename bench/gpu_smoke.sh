#!/usr/bin/env bash
# The GPU check of issue "Where LLMs are fine-tuned", as one command (about 5 minutes on one H100/H200):
#   bench/gpu_smoke.sh OUT
# 1. SmolLM2-135M's shape (bench/smollm2-135m.config.json, random weights: the dequantised weights are
#    517 MB and cannot travel to a machine without a network), bf16 weights + bf16 autocast, batch 16 x 256,
#    50 steps each of peft-lora, lora, l1ra, adaptive and module-alloc, timed blocks rotating in one process;
# 2. the same model in 4-bit (nf4, double quantisation, bf16 compute): PEFT QLoRA against l1ra and lora;
# both with the CUDA sync-debug check on 10 more steps per method, step time and peak memory ratios.
# Writes OUT/env.txt, OUT/bf16/{summary.md,methods.json,meta.json}, OUT/4bit/... and OUT/log.txt.
# Python packages the machine lacks (bitsandbytes, say) travel as wheels in .whl/ (README: "On a GPU").
set -uo pipefail
OUT=${1:?usage: bench/gpu_smoke.sh OUT}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0)); print('transformers', transformers.__version__,
'peft', peft.__version__)"
  python3 -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" || echo "bitsandbytes: missing"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
SHAPE=(--random-from bench/smollm2-135m.config.json --batch-size 16 --seq-len 256 --rounds 10 --steps 5 --sync-check 10)
status=0
python3 bench/methods.py --output "$OUT/bf16" "${SHAPE[@]}" --dtype bfloat16 --bf16 2>&1 | tee "$OUT/log.txt" || status=1
python3 bench/methods.py --output "$OUT/4bit" "${SHAPE[@]}" --load-in-4bit --bf16 --methods peft-lora,l1ra,lora \
  2>&1 | tee -a "$OUT/log.txt" || status=1
exit $status
