"""Peak device memory per GPU (the real Result's `peak_memory_bytes_per_gpu`: CUDA's allocator peak, graph pools
included) of the same cases in grid h100x4-i (eager calls) and h100x4-j (front calls replayed as CUDA graphs):
    python benchmarks/measured/h100x4-2026-11-27k/graph_memory.py > .../graph_memory.txt
"""
import json
from pathlib import Path

GRIDS = Path(__file__).resolve().parents[3] / "experiments/validation"
for case in sorted(p.name for p in (GRIDS / "h100x4-j").iterdir() if p.is_dir()):
    eager, graphs = (json.loads((GRIDS / g / case / "real/result.json").read_text())["peak_memory_bytes_per_gpu"] / 1e9
                     for g in ("h100x4-i", "h100x4-j"))
    print(f"{case:30s} eager (i) {eager:6.2f} GB  graphs (j) {graphs:6.2f} GB  +{graphs - eager:5.2f} GB  "
          f"x{graphs / eager:.2f}")
