"""Issue 7's validation grid: the simulator's prediction against the real backend on one GPU node.

    python benchmarks/validation_grid.py --profile PROFILE.yaml --out experiments/validation/h100 [--gpus 4,2,1]
    python benchmarks/validation_grid.py --calibrate --profile PROFILE.yaml ...  # calibrate for the grid first
    python benchmarks/validation_grid.py --calibrate --per-gpus --profile P.yaml ...  # P-g4.yaml, P-g2.yaml, ...

For every case: `moetb validate SPEC --backends sim,real --ranks G --out OUT/<case>` (the simulator predicts
with the calibrated profile, the real backend measures, both Results and validate.json are written), then
one markdown table of step-time errors (OUT/README.md) with the card and date. `--list` prints the cases.

    python benchmarks/validation_grid.py --repredict experiments/validation/h100x4-c --profile OTHER.yaml

re-predicts a grid's measured cases with another profile (no GPU: the simulator only), so that two
calibrations can be compared on the same measurements. `--resume` reads the cases a cut job already
measured (their validate.json) and runs the rest.

The grid spans what issue 7 asks: tokens per GPU 256..8192, overlap on and off, uniform and zipf routing,
`paper` (7168 -> 18432 -> 7168) and `deepseek-v3` (7168 -> 2048 -> 7168) experts, E = G and E > G, on 4, 2
and 1 GPUs. Models are cut to 4 layers (1 dense + 3 MoE) so a case runs in seconds; the per-layer costs are
what the simulator predicts. Direct transfers (one node: NVLink only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moe.result import write_text_atomic  # noqa: E402

# (name, model preset, experts per GPU, top_k, tokens per GPU, overlap, routing) on G GPUs
CASES_4 = [
    ("paper-e1-t256-seq-uni", "paper", 1, 2, 256, False, "uniform"),
    ("paper-e1-t1024-ovl-uni", "paper", 1, 2, 1024, True, "uniform"),
    ("paper-e1-t4096-ovl-zipf", "paper", 1, 2, 4096, True, "zipf"),
    ("paper-e1-t8192-seq-zipf", "paper", 1, 2, 8192, False, "zipf"),
    ("paper-e4-t4096-ovl-uni", "paper", 4, 4, 4096, True, "uniform"),
    ("paper-e4-t2048-seq-zipf", "paper", 4, 4, 2048, False, "zipf"),
    ("paper-e2-t4096-seq-uni", "paper", 2, 4, 4096, False, "uniform"),
    ("dsv3-e4-t256-ovl-uni", "deepseek-v3", 4, 8, 256, True, "uniform"),
    ("dsv3-e4-t4096-seq-uni", "deepseek-v3", 4, 8, 4096, False, "uniform"),
    ("dsv3-e16-t8192-ovl-zipf", "deepseek-v3", 16, 8, 8192, True, "zipf"),
    ("dsv3-e1-t1024-seq-zipf", "deepseek-v3", 1, 2, 1024, False, "zipf"),
    ("dsv3-e16-t2048-ovl-uni", "deepseek-v3", 16, 8, 2048, True, "uniform"),
]
CASES_2 = [
    ("paper-e1-t4096-ovl-uni", "paper", 1, 2, 4096, True, "uniform"),
    ("dsv3-e4-t2048-seq-zipf", "deepseek-v3", 4, 8, 2048, False, "zipf"),
]
CASES_1 = [
    ("paper-e1-t4096-seq-uni", "paper", 1, 1, 4096, False, "uniform"),
    ("dsv3-e8-t2048-ovl-uni", "deepseek-v3", 8, 8, 2048, True, "uniform"),
]
CASES = {4: CASES_4, 2: CASES_2, 1: CASES_1}


def spec(gpus: int, case: tuple, profile: str) -> dict:
    name, model, per_gpu, top_k, tokens, overlap, routing = case
    experts = per_gpu * gpus
    return {
        "name": f"g{gpus}-{name}",
        "seed": 0,
        "model": {"preset": model, "layers": 4, "dense_layers": 1, "experts": experts, "top_k": min(top_k, experts),
                  "groups": 1, "topk_groups": 1},
        "cluster": {"preset": profile, "nodes": 1, "gpus_per_node": gpus},
        "placement": {"strategy": "one_per_gpu" if per_gpu == 1 else "contiguous"},
        "workload": {"phase": "prefill", "tokens_per_gpu": tokens, "context_len": min(tokens, 4096),
                     "routing": {"distribution": routing, "skew": 0.8 if routing == "zipf" else 0.0}},
        "schedule": {"overlap": overlap, "micro_batches": 2 if overlap else 1, "comm": "direct"},
        "real": {"warmup": 2, "repeats": 5},
    }


def portable(path: Path) -> str:
    """A profile path as the specs name it: from the repository root (where `moetb` runs) when it lies
    inside, so that a committed grid's specs work in any checkout."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_spec(gpus: int, case: tuple, profile: str, out: Path) -> Path:
    folder = out / f"g{gpus}-{case[0]}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(gpus, case, profile), sort_keys=False))
    return path


def calibrate(profile: Path, specs: list[Path], ranks: int | None = None) -> None:
    """`moetb calibrate --backend real` on every GPU (or on `ranks` of them), its op table measured for the
    grid's models."""
    cmd = [sys.executable, "-m", "moe", "calibrate", "--backend", "real", "--out", str(profile)]
    cmd += ["--ranks", str(ranks)] if ranks else []
    cmd += [a for p in specs for a in ("--scenario", str(p))]
    print(f"calibrating -> {profile}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=1800)


def report(name: str, rows: dict) -> dict:
    step = rows["step_time_s"]
    print(f"{name}: predicted {step['predicted'] * 1e3:.2f} ms, measured {step['measured'] * 1e3:.2f} ms, "
          f"error {step['rel_error']:+.1%}", file=sys.stderr, flush=True)
    return {"case": name, **{q: rows[q] for q in ("step_time_s", "moe_layer_s", "host_probe_s") if q in rows}}


def run_case(gpus: int, case: tuple, profile: str, out: Path, resume: bool = False) -> dict:
    folder = out / f"g{gpus}-{case[0]}"
    path = folder / "spec.yaml"
    if resume and (folder / "validate.json").exists():  # measured by an earlier, cut job
        return report(folder.name, {r["quantity"]: r for r in json.loads((folder / "validate.json").read_text())})
    cmd = [sys.executable, "-m", "moe", "validate", str(path), "--backends", "sim,real", "--ranks", str(gpus),
           "--out", str(folder), "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        print(f"{folder.name}: FAILED\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"case": folder.name, "error": proc.stderr.strip().splitlines()[-1:]}
    return report(folder.name, {r["quantity"]: r for r in json.loads(proc.stdout)["rows"]})


def table(rows: list[dict], machine: str) -> str:
    ok = [r for r in rows if "error" not in r]
    errs = [abs(r["step_time_s"]["rel_error"]) for r in ok]
    lines = [f"# Validation: sim (calibrated profile) vs real, {machine}, {datetime.date.today().isoformat()}", "",
             "Written by `python benchmarks/validation_grid.py`; each folder holds spec.yaml, sim/ and real/ "
             "Results and validate.json. Host probe: `moe.hostprobe`'s reference time while the profile was "
             "calibrated against the case's run (+: the host was slower while calibrated).", "",
             "| case | predicted step ms | measured step ms | error | MoE layer pred ms | meas ms | error "
             "| host probe, calibration vs run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {' '.join(r['error'])} | | | | | | |")
            continue
        s, m = r["step_time_s"], r["moe_layer_s"]
        probe = f"{r['host_probe_s']['rel_error']:+.1%}" if "host_probe_s" in r else "-"
        lines.append(f"| {r['case']} | {s['predicted'] * 1e3:.2f} | {s['measured'] * 1e3:.2f} | "
                     f"{s['rel_error']:+.1%} | {m['predicted'] * 1e3:.2f} | {m['measured'] * 1e3:.2f} | "
                     f"{m['rel_error']:+.1%} | {probe} |")
    if errs:
        lines += ["", f"{len(errs)} cases: median |error| of step time {statistics.median(errs):.1%}, "
                      f"max {max(errs):.1%} (goal: median <= 5%, max <= 10%)."]
    return "\n".join(lines) + "\n"


def run_host_factors(real: dict, calibrated_probe_s: float) -> list[float] | None:
    """Each rank's host speed in a run relative to the calibration's, from the host probe (moe.hostprobe):
    the run's per-rank probe / the profile's (None where either was not recorded)."""
    probes = real.get("extra", {}).get("host_probe_s_per_rank")
    if not probes or not calibrated_probe_s:
        return None
    return [round(p / calibrated_probe_s, 3) for p in probes]


PHASES = ("attention_s", "dispatch_s", "expert_s", "combine_s")


def repredict(folder: Path, profile: str, host_from_run: bool = False, phases: bool = False) -> str:
    """Step-time errors of the simulator with `profile` against the measurements in `folder`. With
    `host_from_run`, each case's ranks get the host speeds its run's host probe measured (`host_factors`
    = run probe / calibration probe, per rank) instead of the calibration's: a diagnosis of how much of an
    error is the host's drift between calibration and run, not a prediction (it needs the run). With
    `phases`, each case's MoE-layer phases follow, predicted / measured ms (Result.breakdown)."""
    from moe.spec.loader import build_scenario
    from sim.backend import run as sim_run

    calibrated = yaml.safe_load(Path(profile).read_text()).get("host_probe_s")
    lines, errs = [f"{'case':30s} {'predicted ms':>12s} {'measured ms':>12s} {'error':>7s}"
                   + ("  host factors from the run" if host_from_run else "")], []
    for case in sorted(p for p in folder.glob("g*") if (p / "real" / "result.json").exists()):
        spec = yaml.safe_load((case / "spec.yaml").read_text())
        spec["cluster"]["preset"] = profile
        real = json.loads((case / "real" / "result.json").read_text())
        factors = run_host_factors(real, calibrated) if host_from_run else None
        if factors:
            spec["cluster"]["host_factors"] = factors
        sim = sim_run(build_scenario(spec)).result
        predicted, measured = sim.step_time_s, real["step_time_s"]
        errs.append(predicted / measured - 1)
        lines.append(f"{case.name:30s} {predicted * 1e3:12.2f} {measured * 1e3:12.2f} {errs[-1]:+7.1%}"
                     + (f"  {factors}" if factors else "")
                     + ("".join(f"  {k[:-2]} {getattr(sim.breakdown, k) * 1e3:.2f}/{real['breakdown'][k] * 1e3:.2f}"
                                for k in PHASES) if phases else ""))
    a = [abs(e) for e in errs]
    lines.append(f"{len(a)} cases: median |error| {statistics.median(a):.1%}, max {max(a):.1%}, "
                 f"within 10%: {sum(e <= 0.1 for e in a)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True,
                        help="calibrated profile YAML (moetb calibrate --backend real); made first with --calibrate")
    parser.add_argument("--calibrate", action="store_true",
                        help="calibrate this node into --profile first, the op table measured for the grid's models")
    parser.add_argument("--out", default="results/validation")
    parser.add_argument("--gpus", default="4,2,1", help="comma-separated GPU counts to run")
    parser.add_argument("--per-gpus", action="store_true",
                        help="each GPU count's cases predicted with PROFILE-g<G>.yaml (with --calibrate: "
                             "calibrated on that many GPUs; a host's speed may depend on how many ranks run)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="cases whose folder in --out holds a validate.json (a cut job's) are read, not run again")
    parser.add_argument("--repredict", type=Path, metavar="FOLDER",
                        help="re-predict FOLDER's measured cases with --profile (simulator only) and print the errors")
    parser.add_argument("--phases", action="store_true",
                        help="with --repredict: each case's MoE-layer phases too, predicted / measured ms")
    parser.add_argument("--host-from-run", action="store_true",
                        help="with --repredict: each rank's host speed from the run's host probe against the "
                             "profile's (a diagnosis of host drift, not a prediction)")
    args = parser.parse_args()
    if (args.host_from_run or args.phases) and not args.repredict:
        parser.error("--host-from-run and --phases go with --repredict FOLDER")
    if args.repredict:
        print(repredict(args.repredict, str(Path(args.profile).resolve()), args.host_from_run, args.phases))
        return 0
    counts = [int(g) for g in args.gpus.split(",")]
    if args.list:
        for g in counts:
            for case in CASES[g]:
                print(f"g{g}-{case[0]}")
        return 0
    base = Path(args.profile).resolve()
    profiles = {g: portable(base.with_name(f"{base.stem}-g{g}{base.suffix}") if args.per_gpus else base)
                for g in counts}
    out = Path(args.out)
    specs = {g: [write_spec(g, case, profiles[g], out) for case in CASES[g]
                 if not (args.resume and (out / f"g{g}-{case[0]}" / "validate.json").exists())] for g in counts}
    if args.calibrate and args.per_gpus:
        for g in counts:
            calibrate(Path(profiles[g]), specs[g], g)
    elif args.calibrate:
        calibrate(base, [p for g in counts for p in specs[g]])
    import torch

    machine = f"{torch.cuda.get_device_name()} (torch {torch.__version__})" if torch.cuda.is_available() else "CPU"
    rows = []
    for g in counts:
        for case in CASES[g]:
            rows.append(run_case(g, case, profiles[g], out, args.resume))
            write_text_atomic(out / "README.md", table(rows, machine))  # a cut job keeps the cases it ran
    print(table(rows, machine))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    raise SystemExit(main())
