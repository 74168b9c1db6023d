#!/bin/bash
# GPU tests and correctness of the graph calls, then a calibrated validation grid (validation_grid.py).
#   bash benchmarks/measured/h100x4-2026-11-27k/grid_check.sh PROFILE OUTDIR [--resume]   ($OUT: logs)
set -u
P=$1 V=$2; shift 2
export PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
if [ "${1:-}" != "--resume" ]; then
  timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_model_graphs.py tests/test_real_symm.py \
      > "$OUT/pytest_gpu.log" 2>&1 || { tail -30 "$OUT/pytest_gpu.log"; exit 1; }
  tail -2 "$OUT/pytest_gpu.log"
  timeout 200 torchrun --standalone --nproc-per-node 4 tests/test_real_correctness.py --backend nccl \
      --variants p2p/stream,all_to_all/stream,nvshmem/stream > "$OUT/correct.log" 2>&1
  echo "correct rc $?: $(grep -c ' ok' "$OUT/correct.log") ok"; grep -i "fail\|Error" "$OUT/correct.log" | head -5
  if grep -q "not captured" "$OUT/correct.log"; then  # a grid of eager fallbacks would measure the wrong code
    grep "not captured" "$OUT/correct.log" | head -3; exit 1
  fi
  timeout 470 python3 benchmarks/validation_grid.py --calibrate --profile "$P" --out "$V" --gpus 1,2,4 > "$OUT/grid.log" 2>&1
else
  timeout 540 python3 benchmarks/validation_grid.py --resume --profile "$P" --out "$V" --gpus 1,2,4 > "$OUT/grid.log" 2>&1
fi
echo "grid rc $?"
tar czf "$OUT/grid.tgz" "$P" "$V"
grep -v "Warning\|pg_store\|^\*\|OMP_NUM\|^$" "$OUT/grid.log" | grep "error\|median\|not captured\|Error" | tail -22
