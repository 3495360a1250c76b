#!/usr/bin/env bash
# The GPU check of issue "The engines TRL users already launch", prepared and not yet run (no GPU was lent):
#   bench/gpu_engines.sh OUT          (about 10 minutes)
# 1. bench/compile.py on the GPU: graphs per rank event and the step time against eager of today's layer, the
#    update outside the graph, and a fixed capacity of 16 slots (MiniLM-L6, bf16 off, batch 16 x 64);
# 2. with 2 or more GPUs: the two-line SFT script (bench/engines_sft.py, the embedded SmolLM2-135M, l1ra) under
#    TRL's own accelerate configs multi_gpu, fsdp2, zero2, zero3 (num_processes = the GPUs), each with and
#    without --capacity 16: what accelerate chose, whether ranks moved, the budget held, the replicas agreed.
# Writes OUT/env.txt, OUT/compile.json, OUT/<config>[-capacity].log.
set -uo pipefail
OUT=${1:?usage: bench/gpu_engines.sh OUT}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; echo "gpus: $GPUS"
  python3 -c "import torch, transformers, accelerate, trl; print(torch.__version__, transformers.__version__,
accelerate.__version__, trl.__version__)"; python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" \
  || echo "deepspeed: missing"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout 300 python3 bench/compile.py --json "$OUT/compile.json" 2>&1 | grep -v "^W" | tee "$OUT/compile.log"
if [ "$GPUS" -ge 2 ]; then
  MODEL=$(python3 -c "from dynlora.hf.models import resolve_model; print(resolve_model('smollm2'))")
  CONFIGS=$(python3 -c "import trl, pathlib; print(pathlib.Path(trl.__file__).parent / 'accelerate_configs')")
  for config in multi_gpu fsdp2 zero2 zero3; do
    for capacity in "" 16; do
      log="$OUT/$config${capacity:+-capacity}.log"
      timeout 120 accelerate launch --config_file "$CONFIGS/$config.yaml" --num_processes "$GPUS" \
        bench/engines_sft.py "$MODEL" "$OUT/run-$config" l1ra $capacity > "$log" 2>&1
      echo "$config${capacity:+ capacity $capacity}: exit $?; $(grep -E '^process|Error' "$log" | head -3)"
    done
  done
fi
