python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
for v in one_stream low_priority default; do
VARIANT=$v timeout 100 torchrun --standalone --nproc-per-node 4 .probe/spans.py > $OUT/spans_$v.log 2>&1; echo $v rc=$?; grep "^rank" $OUT/spans_$v.log | sed 's/wait_[a-z]* mb[01] [0-9.]* ms,\? \?//g'
done
NVSHMEM_SYMMETRIC_SIZE=4294967296 TORCH_SYMMMEM_NBLOCKS=64 timeout 100 python3 benchmarks/a2a_floor.py --out $OUT/a2a_floor_4g.json > $OUT/a2a_floor_4g.log 2>&1; echo floor rc=$?; grep -v "NVSHMEM\|bootstrap" $OUT/a2a_floor_4g.log | grep "ms\|a2a_floor" | tail -9
