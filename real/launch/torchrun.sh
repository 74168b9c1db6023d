#!/usr/bin/env bash
# One node, G GPUs, torchrun: calibrate the node, run a scenario with each shard transport (all_to_all,
# p2p), and compare each measurement with the simulator's prediction from that calibrated profile.
#   real/launch/torchrun.sh SPEC.yaml [GPUS]            (output under OUT_DIR, default results/real)
set -euo pipefail
spec=${1:?usage: torchrun.sh SPEC.yaml [GPUS]}
gpus=${2:-$(nvidia-smi -L | wc -l)}
python=${PYTHON:-python}
# NVLink multicast off (shared hosts): see real/dist.py NCCL_SAFE_ENV.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out=${OUT_DIR:-results/real}
mkdir -p "$out"
node=(--set cluster.preset="$PWD/$out/profile.yaml" --set cluster.nodes=1 --set cluster.gpus_per_node="$gpus")
"$python" -m torch.distributed.run --standalone --nproc-per-node "$gpus" -m moe calibrate --backend real \
  --out "$out/profile.yaml" --scenario "$spec"
"$python" -m moe run "$spec" --backend sim --out "$out/sim" "${node[@]}"
for transport in all_to_all p2p; do
  "$python" -m torch.distributed.run --standalone --nproc-per-node "$gpus" -m moe run "$spec" --backend real \
    --out "$out/$transport" "${node[@]}" --set real.transport="$transport"
  "$python" - "$out/sim" "$out/$transport" <<'PY'
import sys
from moe.result import Result
from moe.result.summary import format_comparison
sim, real = (Result.read(f"{d}/result.json") for d in sys.argv[1:])
print(f"{real.extra['transport']}:")
print(format_comparison(sim, real))
PY
done
