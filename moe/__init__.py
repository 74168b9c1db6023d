"""moetb: a testbed for large-scale expert parallelism in Mixture-of-Experts models.

`moe` is the system under study, shared by every backend: the scenario spec, placement, routing,
traffic, the torch model and the Result record. It never imports simpy or mpi4py; `sim`, `emu` and
`real` import it, never the reverse.
"""

__version__ = "0.1.0"
