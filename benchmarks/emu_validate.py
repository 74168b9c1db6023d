"""Simulator prediction against emulator measurement on this machine, with ranks <= cores.

    .venv/bin/python benchmarks/emu_validate.py [--profile P.yaml] [--ranks 2] [--tokens 256 1024]

Without --profile it first runs `moetb calibrate --backend emu` on `ranks` ranks. Then, for each token
count and overlap setting, the simulator predicts the `tiny` scenario with that profile and the emulator
measures it (the same library calls as `moetb validate --backends sim,emu`); it prints step time and the
largest phases with their relative errors. The issue's target: |error| of step time <= 15%.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from emu.backend import calibrate
from emu.backend import run as emu_run
from moe.profile import write_profile
from moe.result.summary import compare
from moe.spec import load_scenario
from sim.backend import run as sim_run


def scenario(profile: Path, ranks: int, tokens: int, overlap: bool):
    return load_scenario({
        "name": f"validate-{tokens}t-{'overlap' if overlap else 'serial'}", "model": {"preset": "tiny"},
        "cluster": {"preset": str(profile), "nodes": 1, "gpus_per_node": ranks},
        "placement": {"strategy": "contiguous"},
        "workload": {"tokens_per_gpu": tokens, "context_len": tokens},
        "schedule": {"overlap": overlap, "micro_batches": 2, "comm": "direct"},
        "emu": {"warmup": 2, "repeats": 7}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--ranks", type=int, default=min(2, os.cpu_count() or 2))
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024])
    args = parser.parse_args()
    profile = args.profile
    if profile is None:
        profile = Path(tempfile.mkdtemp(prefix="moetb-validate-")) / "cpu-host.yaml"
        write_profile(profile, calibrate(ranks=args.ranks))
        print(f"# calibrated {profile}")
    print(f"# tiny on {args.ranks} ranks ({os.cpu_count()} cores), profile {profile}")
    print(f"{'tokens':>7} {'overlap':>8} {'sim step ms':>12} {'emu step ms':>12} {'error':>7}   "
          "largest phase errors (measured ms)")
    for tokens in args.tokens:
        for overlap in (True, False):
            s = scenario(profile, args.ranks, tokens, overlap)
            predicted, measured = sim_run(s).result, emu_run(s, ranks=args.ranks).result
            rows = compare(predicted, measured)
            step = rows[0]
            phases = sorted(rows[2:], key=lambda r: -r["measured"])[:3]
            detail = ", ".join(f"{r['quantity'][:-2]} {r['rel_error']:+.0%} ({r['measured'] * 1e3:.1f})"
                               for r in phases)
            print(f"{tokens:>7} {str(overlap):>8} {step['predicted'] * 1e3:>12.2f} {step['measured'] * 1e3:>12.2f} "
                  f"{step['rel_error']:>+7.0%}   {detail}", flush=True)


if __name__ == "__main__":
    main()
