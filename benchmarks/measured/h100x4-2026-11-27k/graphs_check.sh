#!/bin/bash
# The model's calls as CUDA graphs (real.graphs) on 4 GPUs: GPU tests, correctness, real_perf with graphs on
# and off.   bash benchmarks/measured/h100x4-2026-11-27k/graphs_check.sh   ($OUT: where the logs go)
set -u
export PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS; timeout "$limit" "$@" > "$OUT/$name.log" 2>&1;
         echo "$name: rc $? in $((SECONDS - t0)) s"; }
step pytest_gpu 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_model_graphs.py tests/test_real_symm.py
tail -3 "$OUT/pytest_gpu.log"
step correct 200 torchrun --standalone --nproc-per-node 4 tests/test_real_correctness.py --backend nccl \
    --variants all_to_all/stream,nvshmem/stream
grep -c " ok" "$OUT/correct.log"; grep -v " ok" "$OUT/correct.log" | tail -5
step perf_graphs 220 python3 benchmarks/real_perf.py --out "$OUT/perf_graphs.json"
step perf_eager 220 python3 benchmarks/real_perf.py --set real.graphs=false --out "$OUT/perf_eager.json"
for f in perf_graphs perf_eager; do echo "== $f"; tail -25 "$OUT/$f.log"; done
