#!/usr/bin/env bash
# N nodes x G GPUs with mpirun (Open MPI): one rank per GPU. Rank 0 publishes the rendezvous address over
# MPI (real/dist.py, mpi4py), so no MASTER_ADDR is needed; NCCL moves the shards (MPI carries no GPU data,
# so a CUDA-aware MPI is not needed). Running as root (containers): OMPI_ALLOW_RUN_AS_ROOT=1
# OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 in the environment.
#   real/launch/mpirun.sh SPEC.yaml NODES GPUS_PER_NODE [HOSTFILE]     (no HOSTFILE: this host only)
set -euo pipefail
spec=${1:?usage: mpirun.sh SPEC.yaml NODES GPUS_PER_NODE [HOSTFILE]}
nodes=${2:?}; gpn=${3:?}; hostfile=${4:-}
python=${PYTHON:-$(command -v python)}
hosts=()
[[ -n "$hostfile" ]] && hosts=(--hostfile "$hostfile")
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mpirun -np $((nodes * gpn)) "${hosts[@]}" --map-by ppr:"$gpn":node --bind-to none \
  -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST -x NVSHMEM_DISABLE_NVLS -x PATH -x LD_LIBRARY_PATH \
  -x PYTHONPATH \
  "$python" -m moe run "$spec" --backend real --set cluster.nodes="$nodes" --set cluster.gpus_per_node="$gpn" \
  --out "${OUT_DIR:-results/real-mpirun}" "${@:5}"
