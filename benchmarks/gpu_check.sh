#!/usr/bin/env bash
# Everything that needs a GPU, in two device calls of under 10 minutes each (see the device
# tool's README); each part runs OLMo-core (the peer) and lmforge on the same machine.
#   OUT=... bash benchmarks/gpu_check.sh 1   # GPU tests; 1B seq 4096 mbs 4: OLMo-core, lmforge, transformers
#   OUT=... bash benchmarks/gpu_check.sh 2   # 190M seq 2048 mbs 16 vs OLMo-core; 1B mbs 8; largest micro-batches
# OLMo-core must be unpacked in .peers/ first (see ../shared/peers/olmo_core_throughput.py's header).
set -uo pipefail
PART=${1:?usage: bash benchmarks/gpu_check.sh 1|2}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PEER=../shared/peers/olmo_core_throughput.py
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
peer() {  # PRESET SEQ MBS
  if [ -d .peers ] && [ -f "$PEER" ]; then
    PRESET=$1 SEQ=$2 MBS=$3 SKIP_HF=1 PYTHONPATH=.peers timeout 300 python3 "$PEER" "$OUT" | tail -1
  else
    echo "no .peers/ or $PEER: OLMo-core not run"
  fi
}
if [ "$PART" = 1 ]; then
  timeout 180 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tail -3
  peer olmo2_1B_v2 4096 4
  timeout 360 python3 benchmarks/throughput.py --preset olmo2-1b --seq 4096 --micro-batch 4 --out "$OUT" \
    --cases lmforge,no-z-loss,transformers --olmo-core "$OUT/olmo_core_vs_hf_olmo2_1B_v2_seq4096_mbs4.json"
else
  peer olmo2_190M 2048 16
  timeout 240 python3 benchmarks/throughput.py --preset olmo2-190m --seq 2048 --micro-batch 16 --out "$OUT" \
    --cases lmforge,transformers --olmo-core "$OUT/olmo_core_vs_hf_olmo2_190M_seq2048_mbs16.json"
  timeout 300 python3 benchmarks/throughput.py --preset olmo2-1b --seq 4096 --micro-batch 8 --out "$OUT" \
    --cases lmforge --find-max-micro-batch
fi
