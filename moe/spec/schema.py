"""The Scenario: model + cluster + parallelism + placement + workload + schedule (+ backend options).

Every section is a frozen pydantic model that forbids unknown keys, so a typo in a YAML file fails at the
edge with its key path. Defaults for `model` and `cluster` come from the presets named by their `preset`
key (see `moe/spec/presets/`); the other sections carry their defaults here. Cross-field rules that need
the whole scenario (top_k <= experts, placement feasibility, memory) live in `moe.spec.checks`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Strict scalars: YAML already types its values, so "4", 4.0 or true are not silently taken for an int.
PosInt = Annotated[int, Field(gt=0, strict=True)]
NonNegInt = Annotated[int, Field(ge=0, strict=True)]
PosFloat = Annotated[float, Field(gt=0, strict=True)]
NonNegFloat = Annotated[float, Field(ge=0, strict=True)]
Fraction = Annotated[float, Field(ge=0, le=1, strict=True)]
Flag = Annotated[bool, Field(strict=True)]
Text = Annotated[str, Field(strict=True)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)


# ----------------------------------------------------------------------------------------------- model
class Attention(Section):
    kind: Literal["mla", "mha"] = "mla"
    """mla: multi-head latent attention (KV cache keeps a low-rank latent); mha: plain multi-head."""
    heads: PosInt = 128
    head_dim: PosInt = 128
    """Per-head query/key width without the rope part (MLA's qk_nope_head_dim)."""
    v_head_dim: PosInt = 128
    """Per-head value width."""
    kv_latent: PosInt = 512
    """MLA: width of the compressed KV latent that the cache keeps (kv_lora_rank)."""
    q_latent: NonNegInt = 1536
    """MLA: width of the compressed query latent (q_lora_rank); 0 projects queries directly."""
    rope_dim: PosInt = 64
    """MLA: width of the decoupled rotary key shared by all heads (qk_rope_head_dim)."""
    kv_dtype: Literal["bf16", "fp8"] = "bf16"
    """Element type of the KV cache."""


class Model(Section):
    preset: Text = "paper"
    layers: PosInt = 61
    dense_layers: NonNegInt = 3
    """The first `dense_layers` layers have a dense FFN instead of experts."""
    hidden: PosInt = 7168
    expert_hidden: PosInt = 18432
    """Intermediate width of one routed expert's SwiGLU MLP."""
    dense_hidden: PosInt = 18432
    """Intermediate width of the dense FFN of the first layers."""
    experts: PosInt = 256
    shared_experts: NonNegInt = 0
    """Experts every token passes through (same width as a routed expert), run on every GPU."""
    top_k: PosInt = 8
    score: Literal["softmax", "sigmoid"] = "sigmoid"
    groups: PosInt = 1
    """Expert groups for group-limited routing (DeepSeek-V3: 8); 1 disables it."""
    topk_groups: PosInt = 1
    """Groups each token may choose experts from."""
    route_scale: PosFloat = 1.0
    """Multiplier on the routing weights (DeepSeek-V3: 2.5)."""
    vocab: PosInt = 129280
    attention: Attention = Attention()
    dtype: Literal["fp8", "bf16"] = "fp8"
    """Weights and GEMM activations: fp8 (e4m3, 128x128 weight blocks, per-token 1x128 activation
    scales) or bf16."""

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers


# --------------------------------------------------------------------------------------------- cluster
class GemmPoint(Section):
    """One measured GEMM: C[m, n] = A[m, k] @ B[k, n] at `TFLOPS` (dense, 2*m*k*n flops)."""

    m: PosInt
    k: PosInt
    n: PosInt
    dtype: Literal["fp8", "bf16"] = "fp8"
    TFLOPS: PosFloat


class CurvePoint(Section):
    """Measured bandwidth of a communication pattern at one message size."""

    bytes: PosInt
    GBps: PosFloat


class OpPoint(Section):
    """One measured operation of the runtime (moe.model.optable): `op` on `tokens` tokens (rows for
    `expert`) with `context` keys per sequence (attention; 0 elsewhere) took `s` seconds, for the model
    dims named by `model` (moe.model.shapes.op_signature). `per_node`: ranks that shared the node's cores
    while it was measured (CPU calibration); 0 when ranks do not share a device (GPUs)."""

    op: Text
    model: Text
    tokens: PosInt
    context: NonNegInt = 0
    s: PosFloat
    per_node: NonNegInt = 0
    ranks: NonNegInt = 0
    """Ranks that took part in the measured call (op `exchange`, measured at several job sizes; the simulator
    takes the points nearest its GPUs, sim.optable); 0: not recorded (per-GPU ops, older calibrations)."""
    host_s: NonNegFloat | None = None
    """Host seconds of the call (GPU calibration: from the call to its return, the device running its
    kernels meanwhile): the cost of issuing it, which the simulator's host model charges (sim.costs)."""
    device_s: NonNegFloat | None = None
    """Device seconds of the call with the host ahead (GPU calibration: its kernels queued behind a device
    sleep run back to back); `s` is timed on an idle GPU, where a host-bound call's kernels wait for the
    host. The simulator's device time where every chosen point has it (sim.optable)."""


class Cluster(Section):
    preset: Text = "h800-ib"
    name: Text = ""
    """Human description of the machine."""
    nodes: PosInt = 2
    gpus_per_node: PosInt = 8
    fp8_TFLOPS: PosFloat = 1979.0
    """Peak dense FP8 tensor rate per GPU (roofline ceiling)."""
    bf16_TFLOPS: PosFloat = 989.0
    """Peak dense BF16 tensor rate per GPU."""
    hbm_GBps: PosFloat = 3350.0
    """HBM bandwidth per GPU, for memory-bound operations."""
    memory_GB: PosFloat = 80.0
    """Device memory per GPU in GB (1e9 bytes)."""
    gemm_table: tuple[GemmPoint, ...] = ()
    """Measured GEMM rates; costs interpolate here and fall back to the roofline elsewhere."""
    nvlink_GBps: PosFloat = 160.0
    """Achievable intra-node bandwidth per GPU per direction."""
    nvlink_latency_us: NonNegFloat = 2.0
    nic_GBps: PosFloat = 50.0
    """Achievable bandwidth of one NIC per direction (one NIC per GPU, on its own rail)."""
    nic_latency_us: NonNegFloat = 3.0
    fabric_oversubscription: Annotated[float, Field(ge=1, strict=True)] = 1.0
    """Leaf/spine oversubscription: uplink bandwidth of a leaf = downlink bandwidth / this ratio."""
    gpus_per_leaf: PosInt = 32
    """GPUs (NICs) under one leaf switch of each rail; traffic between leaves crosses the spine."""
    launch_overhead_us: NonNegFloat = 5.0
    """Fixed cost of one GPU kernel (launch and tail), added to every compute op."""
    message_overhead_us: NonNegFloat = 2.0
    """Fixed cost of posting one point-to-point message."""
    comm_copy_GBps: NonNegFloat = 0.0
    """Bytes per second the communication kernels' SMs copy per GPU (into send buffers, forwarding,
    out of receive buffers); 0: copies are not a limit (the simulator then models links only)."""
    comm_compute_slowdown: NonNegFloat = 0.0
    """How much slower compute runs while its GPU's communication kernels move data (their SMs and HBM
    traffic are taken from it): the simulator stretches a compute task's time inside a transfer's window by
    1 + this. Calibrated (`real.interference`: a GEMM beside an all-to-all); 0: no interference."""
    alltoall_curve: tuple[CurvePoint, ...] = ()
    """Measured all-to-all bus bandwidth versus bytes per rank (calibration)."""
    p2p_curve: tuple[CurvePoint, ...] = ()
    """Measured point-to-point bandwidth per direction versus message bytes (calibration)."""
    op_table: tuple[OpPoint, ...] = ()
    """Measured times of the runtime's own operations (calibration); the simulator prefers them to its
    cost model for the model dims they were measured for."""
    host_factors: tuple[PosFloat, ...] = ()
    """Per calibrated rank, its host's issue costs relative to the median rank's (GPU calibration). The
    simulator's host model gives GPU g the factor of rank g mod len: ranks of one job run at different
    host speeds, and every exchange waits for the slowest."""
    host_probe_s: PosFloat | None = None
    """Seconds of `moe.hostprobe`'s reference workload on the calibrated hosts while they were calibrated
    (median over ranks): set beside a run's own probe, it tells how fast the host was then."""

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


# ------------------------------------------------------------------------------------------- parallel
class Parallel(Section):
    attention_tp: PosInt = 1
    """Tensor parallelism of attention inside a node; attention is data-parallel across the rest."""


# ------------------------------------------------------------------------------------------ placement
class Placement(Section):
    strategy: Literal["one_per_gpu", "contiguous", "random", "topology_aware", "replicate_hot"] = (
        "one_per_gpu"
    )
    replicas: NonNegInt = 0
    """Redundant expert slots beyond one per logical expert (replicate_hot, topology_aware). With
    one_per_gpu the spare GPUs (GPUs - experts) always hold replicas of the hottest experts."""
    slots_per_gpu: NonNegInt = 0
    """Expert slots per GPU; 0 means ceil((experts + replicas) / GPUs)."""
    search_iters: PosInt = 2000
    """topology_aware: local-search moves tried after the greedy start."""


# ------------------------------------------------------------------------------------------- workload
class Routing(Section):
    distribution: Literal["uniform", "zipf", "trace", "gate"] = "uniform"
    """uniform/zipf: synthetic expert popularity; trace: replay expert ids from `trace`; gate: run the
    model's gate on random activations."""
    skew: NonNegFloat = 1.0
    """Zipf exponent of expert popularity (0 is uniform)."""
    trace: Text | None = None
    """Path to a routing trace (CSV or NPZ of expert ids per token per layer)."""
    layer_variation: Fraction = 0.0
    """0: every layer has the same popularity ranking; 1: an independent ranking per layer."""
    coactivation: Fraction = 0.0
    """Probability that a token's choices are drawn from a correlated expert cluster."""
    drift: NonNegFloat = 0.0
    """Per-step random walk of expert popularity (standard deviation of log-popularity per step)."""


class LoadBalance(Section):
    method: Literal["none", "bias", "capacity"] = "none"
    gamma: NonNegFloat = 0.001
    """bias: update speed, bias += gamma * sign(mean load - load) each step (DeepSeek-V3)."""
    capacity_factor: PosFloat = 1.25
    """capacity: tokens an expert slot accepts = factor * mean tokens per slot; overflow is dropped."""


class Workload(Section):
    phase: Literal["prefill", "decode"] = "prefill"
    tokens_per_gpu: PosInt = 4096
    """Tokens entering each MoE layer per GPU per step."""
    context_len: PosInt = 4096
    """prefill: prompt length (sequences of this many tokens); decode: KV-cache length per sequence."""
    steps: PosInt = 1
    """Forward steps simulated or run (load balancing and drift evolve over steps)."""
    routing: Routing = Routing()
    load_balance: LoadBalance = LoadBalance()


# ------------------------------------------------------------------------------------------- schedule
class Schedule(Section):
    overlap: Flag = True
    """Communication of one micro-batch overlaps computation of another."""
    micro_batches: PosInt = 2
    layer_pipeline: Flag = False
    """The next layer starts on the part of the batch that has arrived."""
    dispatch_dtype: Literal["fp8", "bf16"] = "fp8"
    combine_dtype: Literal["bf16", "fp8"] = "bf16"
    comm: Literal["direct", "hierarchical"] = "hierarchical"
    """direct: every remote GPU over NICs and fabric; hierarchical: RDMA to the same local index on the
    target node, then NVLink inside it (DeepEP's normal kernels)."""


# ------------------------------------------------------------------------------------ backend options
class SimOptions(Section):
    network: Literal["analytic", "flow"] = "flow"
    link_timeline: Flag = True
    """Record link utilisation over time (for heatmaps)."""
    layer_samples: NonNegInt = 0
    """MoE layers routed independently; the others reuse them round-robin. 0: one when every layer has the
    same expert popularity (routing.layer_variation 0, no trace), else min(MoE layers, 8)."""
    runtime: Literal["auto", "grouped", "messages"] = "auto"
    """Whose schedule to predict: grouped (collectives per layer and micro-batch: DeepEP, NCCL, the real
    backend) or messages (one message per peer, shards computed as they land: the MPI emulator); auto:
    messages when the profile's op table was measured on CPU ranks (emu calibration), else grouped."""


class EmuOptions(Section):
    ranks: NonNegInt = 0
    """Ranks to start when not already under mpiexec; 0 means one per GPU of the cluster."""
    warmup: NonNegInt = 1
    repeats: PosInt = 3
    timeout_s: PosFloat = 60.0
    """Every blocking wait gives up after this long and aborts the job."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: NonNegInt = 0
    """Intra-op threads per rank (torch); 0: the host's cores divided by its ranks (at least 1)."""
    fail_rank: Annotated[int, Field(ge=-1, strict=True)] = -1
    """Fault injection (tests): this rank fails at `fail_at` in the first MoE layer it runs; -1: none."""
    fail_at: Literal["dispatch", "expert", "combine"] = "expert"
    fail_mode: Literal["raise", "hang"] = "raise"
    """raise: the rank raises an exception; hang: it stops responding (the others' bounded waits end
    the job)."""


class RealOptions(Section):
    transport: Literal["p2p", "all_to_all", "nvshmem"] = "all_to_all"
    """p2p: batch_isend_irecv of shards; all_to_all: all_to_all_single with splits (both NCCL, the receivers'
    sizes exchanged first); nvshmem: PyTorch's NVSHMEM all_to_all_vdev, splits on the device (`real.symm`;
    GPUs with NVSHMEM only)."""
    graphs: bool = True
    """On a GPU, the model's calls are captured as CUDA graphs and replayed (`moe.model.graphs`): attention,
    dense FFN, gate and shared experts per (layer, micro-batch); each routed expert per padded row count
    (less than 6.25% more rows from 256 up, fewer than 16 more below); false: issued eagerly, op by op."""
    warmup: NonNegInt = 2
    """Untimed steps before the timed ones; with `graphs` on a GPU at least two per routing pattern
    (`workload.steps`), so that every shape is captured before the timing starts."""
    repeats: PosInt = 5
    timeout_s: PosFloat = 120.0


# ------------------------------------------------------------------------------------------- scenario
class Scenario(Section):
    name: Text = "scenario"
    seed: NonNegInt = 0
    model: Model = Model()
    cluster: Cluster = Cluster()
    parallel: Parallel = Parallel()
    placement: Placement = Placement()
    workload: Workload = Workload()
    schedule: Schedule = Schedule()
    sim: SimOptions = SimOptions()
    emu: EmuOptions = EmuOptions()
    real: RealOptions = RealOptions()
