"""Discrete-event simulator of a scenario: GPU compute streams, comm engines, links, collectives.

    moetb run SPEC --backend sim          (sim.backend.run)

Modules, in the order a scenario flows through them:
  gemm      GEMM time from the profile's measured table, roofline fallback
  costs     compute cost of one layer on one GPU (attention, gate, experts, FFNs, TP collectives)
  maxmin    flow-level network: (weighted) max-min fair rates, flows over time
  network   one dispatch or combine phase on the links: copy engines, forwarding, analytic or flow model
  executor  the SimPy step: per GPU a compute stream and a comm engine, micro-batches, collectives
  events    typed records the executor appends
  reduce    records -> Result and Chrome trace (pure)
  backend   scenario -> routing and traffic (moe) -> plan -> step -> Result
  deepep    DeepEP's normal-kernel benchmark as a scenario, and its bottleneck-bandwidth metric
Nothing here imports torch, prints, plots or writes files.
"""
