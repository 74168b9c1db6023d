export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -c "import simpy" 2>/dev/null || python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
R=$PWD
for i in 1 2; do
  for v in base replay; do
    if [ $v = base ]; then cd $R/.probe/base; else cd $R; fi
    PYTHONPATH=$PWD timeout -k 5 120 python3 benchmarks/real_perf.py --out $OUT/ab_${v}_$i.json > $OUT/ab_${v}_$i.log 2>&1; echo $v $i rc=$?
    grep -A4 "^transport" $OUT/ab_${v}_$i.log | tail -3
  done
done
