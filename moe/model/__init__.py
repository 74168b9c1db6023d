"""The FP8 MoE model in torch, written for one device with no communication inside; runtimes distribute it.

Modules (import them directly; this package file imports nothing, so `moe.model.shapes` stays torch-free):
  shapes     GEMM shapes (M, K, N) one layer runs for a token count (no torch; for the simulator and
             calibration)
  fp8        FP8 e4m3 block quantization of weights and activations, and the wire format of token shards
  linear     `Linear` (FP8 or BF16 weights) and `fp8_linear` with its GEMM paths (_scaled_mm / dequantize)
  init       deterministic, device-independent random weights seeded per piece (seed, layer, piece, expert)
  attention  MLA (latent KV cache, absorbed decode) and MHA, with their KV caches
  gate       scores, group-limited top-k, selection-only bias, route scaling, given-id routing
  ffn        SwiGLU MLPs: routed experts (stacked, a list of expert ids), shared experts, dense FFN
  layer      one transformer block and the interface the runtimes call (attention, route, expert_forward,
             combine) plus the single-device reference `forward`
  model      the whole stack: `build_model`, `build_layer`, `MoEModel.forward`, random inputs
"""
