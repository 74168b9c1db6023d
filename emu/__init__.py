"""The MPI emulator: every MPI rank is one EP rank running the real FP8 MoE model (moe.model); token
shards move between ranks by non-blocking point-to-point messages.

    backend       run / calibrate entry points (moe.backends contract)
    launch        start `mpiexec -n N python -m moe ...`, or detect an enclosing launcher
    job           one rank's run: device, threads, plan, model, warm-up, timed steps
    plan          placement and per-(step, MoE layer) routing from moe.placement / routing / traffic
    microbatch    sequences, micro-batches and KV caches of a rank's tokens
    runtime       the event loop of one forward step (overlap, layer pipeline, progress)
    dispatch      the dispatch/combine protocol over any Transport (the one copy of it)
    transport     the Transport interface; mpi_transport: its mpi4py implementation
    faults        abort the whole job on any rank's error; fault injection for tests
    timing        per-rank spans; report: records -> Result and merged trace
    calibrate     OSU-style MPI and CPU GEMM microbenchmarks -> a cpu-host profile
"""
