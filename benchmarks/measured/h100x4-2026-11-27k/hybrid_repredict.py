"""Grid h100x4-j re-predicted with its profile but the device times of some ops taken from the host-ahead profile
(h100x4-ahead: the same op-table points timed behind a device sleep, another node, grid h100x4-i's), to see what
host-ahead device times would change (offline, before `device_s` existed):
    python benchmarks/measured/h100x4-2026-11-27k/hybrid_repredict.py > .../hybrid_repredict.txt
`hybrid_repredict.txt` ran in a worktree of 838e480 (the grid's code: its simulator pads no expert rows).
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
graphs = yaml.safe_load(open(ROOT / "experiments/profiles/h100x4-graphs-2026-11-27.yaml"))
ahead = yaml.safe_load(open(ROOT / "experiments/profiles/h100x4-ahead-2026-11-27.yaml"))


def key(p):
    return p["op"], p["model"], p["tokens"], p["context"], p.get("per_node", 0)


ahead_s = {key(p): p["s"] for p in ahead["op_table"]}
for ops in [("expert", "shard"), ("expert", "shard", "combine", "dispatch")]:
    table = [{**p, "s": ahead_s.get(key(p), p["s"])} if p["op"] in ops else p for p in graphs["op_table"]]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({**graphs, "op_table": table}, f, sort_keys=False)
    print(f"== device times of {', '.join(ops)} from the host-ahead profile", flush=True)
    subprocess.run([sys.executable, str(ROOT / "benchmarks/validation_grid.py"), "--repredict",
                    str(ROOT / "experiments/validation/h100x4-j"), "--profile", f.name, "--phases"], check=True)
