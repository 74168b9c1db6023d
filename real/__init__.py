"""The GPU backend: the emulator's runtime (`emu.runtime`, `emu.dispatch`, `emu.report`) with one process per
GPU and a torch.distributed transport: NCCL on GPUs, gloo on CPU processes (tests).

    backend     run / calibrate entry points (moe.backends contract); starts torchrun outside a launcher
    dist        process groups from torchrun, mpirun or srun variables; NCCL safety settings and timeouts
    transport   the grouped shard transport: all_to_all_single or batch_isend_irecv per (key, phase),
                per-phase process groups and CUDA streams, stream-ordered completion
    job         one rank's run: real.* options, CUDA-event step timing
    timing      the CUDA-event clock (spans, transfers, the compute stream's waits)
    calibrate   GPU microbenchmarks -> a hardware profile for the simulator
    launch/     torchrun, mpirun and Slurm scripts for clusters
"""
