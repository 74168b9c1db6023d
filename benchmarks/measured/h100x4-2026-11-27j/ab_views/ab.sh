export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -c "import simpy" 2>/dev/null || python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
R=$PWD
for i in 1 2 3; do
  for v in base views; do
    if [ $v = base ]; then cd $R/.probe/base; else cd $R; fi
    PYTHONPATH=$PWD timeout -k 5 100 python3 benchmarks/real_perf.py --exchange-only --out $OUT/ab_${v}_$i.json > $OUT/ab_${v}_$i.log 2>&1; echo $v $i rc=$?
    grep -E "^(p2p|all_to_all|nvshmem) " $OUT/ab_${v}_$i.log
  done
done
