#!/bin/bash
# Host time of the expert path: in real runs of grid l's multi-expert deepseek-v3 cases (real_host_time.py
# run, per call) and in op-table calls with the CPU caches warm and cold (host_cold.py, CUDA graphs).
#   bash benchmarks/measured/h100x4-2026-11-27l/host_diag.sh      ($OUT: diag.tgz)
set -u
export PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
D=$OUT/diag; mkdir -p "$D"
G=experiments/validation/h100x4-l
cp $G/g4-dsv3-e16-t2048-ovl-uni/spec.yaml /tmp/g4-dsv3-e16-t2048-ovl-uni.yaml
cp $G/g1-dsv3-e8-t2048-ovl-uni/spec.yaml /tmp/g1-dsv3-e8-t2048-ovl-uni.yaml
timeout 150 torchrun --standalone --nproc-per-node 4 benchmarks/real_host_time.py run /tmp/g4-dsv3-e16-t2048-ovl-uni.yaml \
    --out "$D" > "$D/run_g4.log" 2>&1; echo "g4 rc $?"
timeout 90 torchrun --standalone --nproc-per-node 1 benchmarks/real_host_time.py run /tmp/g1-dsv3-e8-t2048-ovl-uni.yaml \
    --out "$D" > "$D/run_g1.log" 2>&1; echo "g1 rc $?"
timeout 200 python3 benchmarks/host_cold.py --models deepseek-v3 --ops expert,shard --out "$D/host_cold.json" \
    > "$D/host_cold.txt" 2>&1; echo "host_cold rc $?"
tar czf "$OUT/diag.tgz" -C "$OUT" diag
head -25 "$D/host_g4-dsv3-e16-t2048-ovl-uni_0.txt"; head -25 "$D/host_g1-dsv3-e8-t2048-ovl-uni_0.txt"; tail -8 "$D/host_cold.txt"
