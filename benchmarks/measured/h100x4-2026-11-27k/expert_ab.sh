#!/bin/bash
# GPU tests of the graph calls, then expert_ab.py on four of grid h100x4-j's cases, eager experts and
# replayed ones alternating on one node.   bash benchmarks/measured/h100x4-2026-11-27k/expert_ab.sh  ($OUT)
set -u
export PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_model_graphs.py > "$OUT/pytest_gpu.log" 2>&1 \
    || { tail -30 "$OUT/pytest_gpu.log"; exit 1; }
tail -1 "$OUT/pytest_gpu.log"
G=experiments/validation/h100x4-j
CASES=${CASES:-g1-dsv3-e8-t2048-ovl-uni g4-dsv3-e4-t256-ovl-uni g4-paper-e1-t1024-ovl-uni g4-dsv3-e16-t2048-ovl-uni}
for c in $CASES; do
  n=${c:1:1}
  for v in ${VARIANTS:-eager graphs}; do
    flag=$([ $v = eager ] && echo --eager-experts)
    [ -e "$OUT/$c-$v" ] && v=$v-again
    timeout 90 torchrun --standalone --nproc-per-node "$n" benchmarks/measured/h100x4-2026-11-27k/expert_ab.py \
        $G/$c/spec.yaml "$OUT/$c-$v" $flag > "$OUT/$c-$v.log" 2>&1
    python3 -c "import json; r=json.load(open('$OUT/$c-$v/result.json')); b=r['breakdown']; print('$c $v', 'step %.2f ms' % (r['step_time_s']*1e3), 'moe %.2f' % (r['moe_layer_s']*1e3), 'expert %.2f' % (b['expert_s']*1e3))" 2>&1 | tail -1
    grep -h "not captured" "$OUT/$c-$v.log" | head -2
    rm -f "$OUT/$c-$v/trace.json"
  done
done | tee "$OUT/expert_ab.txt"
tar czf /tmp/ab.tgz -C "$OUT" . && find "$OUT" -mindepth 1 ! -name expert_ab.txt -delete && mv /tmp/ab.tgz "$OUT/"
