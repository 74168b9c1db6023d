python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1


for v in bind plain bind; do
 mkdir -p $OUT/$v
 if [ $v = bind ]; then L="torchrun --standalone --nproc-per-node 4 --no-python .probe/bind.sh"; else L="torchrun --standalone --nproc-per-node 4"; fi
 timeout 100 $L benchmarks/real_host_time.py ops --out $OUT/$v/host_time > $OUT/$v/ops.log 2>&1; echo $v ops rc=$?
 grep "op \|calls per" $OUT/$v/host_time/host_ops_0.txt | awk '{print $0}' | head -14
 timeout 100 $L benchmarks/real_perf.py --exchange-only --out $OUT/$v/exchange.json > $OUT/$v/exchange.log 2>&1; echo $v exch rc=$?; grep "ms\|bare" $OUT/$v/exchange.log | grep -v NVSHMEM | tail -4
done
