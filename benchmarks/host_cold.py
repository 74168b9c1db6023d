"""Host time of the runtime's ops with warm and with cold CPU caches, one GPU, one process.

    python benchmarks/host_cold.py --out results/host_cold.json
    python benchmarks/host_cold.py --quick --out /tmp/host_cold.json      # CPU smoke run (tiny model)

`moetb calibrate --backend real` times every op-table point with the host's caches evicted first
(`real.calibrate.host_scrub`), because in a run other calls run between two calls of one op. This measures
what that changes, in one job, so that no difference between jobs' hosts enters: for the `paper` and
`deepseek-v3` models the attention (prefill), gate, dispatch, expert and combine points at a few token
counts (`GRID`), timed back to back (warm) and after `host_scrub` (cold), in ROUNDS alternating passes
(warm, cold, warm, cold, ...) so that a drift of the host's speed hits both. Per point: the median over
rounds of the host seconds (`host_s`: the call's issue time) and of the device seconds, and cold / warm.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe.result import write_json_atomic  # noqa: E402

ROUNDS = 3
OPS = ("attention.prefill", "gate", "dispatch", "expert", "shard", "combine")
GRID = {"tokens": (128, 512, 1024), "rows": (64, 512), "prefill": ((128, 256), (512, 512), (1024, 1024))}
QUICK = {"tokens": (16, 64), "rows": (16,), "prefill": ((16, 64),)}


def host_times_s(fn, warmup: int, repeats: int, before=None) -> tuple[float, float]:
    """CPU stand-in for real.calibrate.cuda_times_s (--quick): the host clock for both answers."""
    from emu.coldcache import median_time_s

    t = median_time_s(fn, warmup, repeats, before)
    return t, t


def report(passes: dict, device: str, torch_version: str, repeats: int, out: Path) -> str:
    """Per point medians and ratios (module docstring), written to `out`; returns the table."""
    rows = []
    for (name, op, t, s), v in passes.items():
        med = {k: statistics.median(x) for k, x in v.items() if x}
        if len(med) < 4:
            continue
        rows.append({"model": name, "op": op, "tokens": t, "context": s, **med,
                     "host_ratio": med["cold_host"] / med["warm_host"], "device_ratio": med["cold_s"] / med["warm_s"]})
    write_json_atomic(out, {"device": device, "torch": torch_version, "rounds": ROUNDS, "repeats": repeats,
                            "rows": rows})
    lines = [f"host_cold: {device}, torch {torch_version}, {ROUNDS} rounds x {repeats} calls",
             f"{'model':12s} {'op':18s} {'T':>5s} {'S':>5s} {'warm host ms':>12s} {'cold host ms':>12s} "
             f"{'cold/warm':>9s} {'device cold/warm':>16s}"]
    for r in rows:
        lines.append(f"{r['model']:12s} {r['op']:18s} {r['tokens']:5d} {r['context']:5d} "
                     f"{r['warm_host'] * 1e3:12.3f} {r['cold_host'] * 1e3:12.3f} {r['host_ratio']:9.2f} "
                     f"{r['device_ratio']:16.2f}")
    if rows:
        ratios = [r["host_ratio"] for r in rows]
        lines.append(f"host cold/warm over {len(rows)} points: median {statistics.median(ratios):.2f}, "
                     f"range {min(ratios):.2f}-{max(ratios):.2f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="tiny model on the CPU, host clock only")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--models", default="paper,deepseek-v3", help="comma-separated model presets")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated op-table operations")
    p.add_argument("--eager", action="store_true", help="eager calls (default: CUDA graphs, as `real.graphs`)")
    args = p.parse_args()

    import torch

    from emu.calibrate import runtime_ops
    from moe.model.graphs import ModelCalls
    from moe.model.optable import Grid, measure
    from moe.spec.loader import load_preset
    from moe.spec.schema import Model
    from real.calibrate import cuda_times_s, host_scrub

    gpu = torch.cuda.is_available() and not args.quick
    dev = torch.device("cuda", 0) if gpu else torch.device("cpu")
    times = cuda_times_s if gpu else host_times_s
    grid = Grid(decode=(), **(QUICK if args.quick else GRID))
    names = ("tiny",) if args.quick else tuple(args.models.split(","))
    ops = tuple(args.ops.split(","))
    wire = ("fp8", "bf16")
    passes: dict[tuple, dict[str, list]] = {}
    for name in names:
        model = Model.model_validate({**load_preset("model", name), "preset": name})
        for r in range(ROUNDS):
            for mode in ("warm", "cold"):
                timer = functools.partial(times, warmup=2, repeats=args.repeats,
                                          before=host_scrub() if mode == "cold" else None)
                calls = ModelCalls(dev, graphs=gpu and not args.eager)
                for pt in measure(model, timer, grid, device=dev, ranks=1, wire=wire, only=ops,
                                  ops=runtime_ops(dev, wire, host_wire=False, calls=calls)):
                    key = (name, pt["op"], pt["tokens"], pt["context"])
                    row = passes.setdefault(key, {"warm_host": [], "cold_host": [], "warm_s": [], "cold_s": []})
                    row[f"{mode}_host"].append(pt.get("host_s", pt["s"]))
                    row[f"{mode}_s"].append(pt["s"])
            print(f"# {name}: round {r + 1} of {ROUNDS}", file=sys.stderr, flush=True)
            report(passes, "partial", torch.__version__, args.repeats, Path(args.out))  # a cut job keeps these
    device = torch.cuda.get_device_name() if gpu else "CPU (host clock)"
    print(report(passes, device, torch.__version__, args.repeats, Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
