#!/usr/bin/env bash
# Everything that needs a GPU, as one device call (see the device tool's README): the GPU tests,
# then lmforge's throughput benchmark beside OLMo-core's on the same machine, both shapes.
#   OUT=... bash benchmarks/gpu_check.sh          (OLMo-core unpacked in .peers/, see its script's header)
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PEER=../shared/peers/olmo_core_throughput.py
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tail -5
if [ -d .peers ] && [ -f "$PEER" ]; then
  PRESET=olmo2_1B_v2 SEQ=4096 MBS=4 SKIP_HF=1 PYTHONPATH=.peers python3 "$PEER" "$OUT" | tail -1
  PRESET=olmo2_190M SEQ=2048 MBS=16 SKIP_HF=1 PYTHONPATH=.peers python3 "$PEER" "$OUT" | tail -1
fi
python3 benchmarks/throughput.py --preset olmo2-1b --seq 4096 --micro-batch 4 --out "$OUT" \
  --olmo-core "$OUT/olmo_core_vs_hf_olmo2_1B_v2_seq4096_mbs4.json" --find-max-micro-batch
python3 benchmarks/throughput.py --preset olmo2-1b --seq 4096 --micro-batch 8 --out "$OUT" --cases lmforge,transformers
python3 benchmarks/throughput.py --preset olmo2-190m --seq 2048 --micro-batch 16 --out "$OUT" \
  --olmo-core "$OUT/olmo_core_vs_hf_olmo2_190M_seq2048_mbs16.json"
