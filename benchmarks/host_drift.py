"""How much a host-bound case's step time moves within one job and between calibrations (issue 7's grid).

    python benchmarks/host_drift.py --out results/host_drift [--rounds 3] [--cases g1-dsv3-e8-t2048-ovl-uni ...]

One job on the GPU node: calibrate (profile A, `moetb calibrate --backend real`, op table for the cases), run
every case `--rounds` times round-robin through `moetb validate --backends sim,real` (the validation grid's
specs, `validation_grid.py`), calibrate again (profile B), then print per case the measured step time of each
round with its host probe (`moe.hostprobe`, median over ranks) and the simulator's prediction with A and
with B. The spread of one case's rounds is the run-to-run drift within a job; A against B is the
calibration's drift over the same minutes. Default cases: the grid's most host-bound ones and a device-bound
control.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import validation_grid as vg  # noqa: E402  (puts the checkout on the path)

from moe.result import write_json_atomic, write_text_atomic  # noqa: E402
from moe.spec.loader import build_scenario  # noqa: E402
from sim.backend import run as sim_run  # noqa: E402

DEFAULT = ["g1-dsv3-e8-t2048-ovl-uni", "g4-dsv3-e1-t1024-seq-zipf", "g4-dsv3-e4-t256-ovl-uni",
           "g4-paper-e1-t8192-seq-zipf"]


def case_of(name: str) -> tuple[int, tuple]:
    for g, cases in vg.CASES.items():
        for c in cases:
            if f"g{g}-{c[0]}" == name:
                return g, c
    raise SystemExit(f"--cases: {name!r} is not a case of validation_grid.py (see its --list)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/host_drift")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=DEFAULT)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    chosen = [case_of(n) for n in args.cases]
    prof_a, prof_b = out / "profile_a.yaml", out / "profile_b.yaml"
    specs = [vg.write_spec(g, c, str(prof_a), out / "specs") for g, c in chosen]
    vg.calibrate(prof_a, specs)
    runs = {}
    for r in range(args.rounds):
        for g, c in chosen:
            folder = out / f"round{r}"
            vg.write_spec(g, c, str(prof_a), folder)
            runs.setdefault(f"g{g}-{c[0]}", []).append(vg.run_case(g, c, str(prof_a), folder))
    write_json_atomic(out / "runs.json", runs)  # kept if the second calibration fails
    vg.calibrate(prof_b, specs)
    lines = [f"{'case':28s} {'measured ms per round (host probe ms)':>48s} {'spread':>7s} {'pred A ms':>9s} "
             f"{'pred B ms':>9s} {'B/A':>6s}"]
    for name, rows in runs.items():
        ok = [x for x in rows if "error" not in x]
        meas = [x["step_time_s"]["measured"] for x in ok]
        probes = [x["host_probe_s"]["measured"] if "host_probe_s" in x else float("nan") for x in ok]
        spec = yaml.safe_load((out / "round0" / name / "spec.yaml").read_text())
        pred = []
        for prof in (prof_a, prof_b):
            spec["cluster"]["preset"] = str(prof)
            pred.append(sim_run(build_scenario(spec)).result.step_time_s)
        cells = " ".join(f"{m * 1e3:.1f} ({p * 1e3:.2f})" for m, p in zip(meas, probes, strict=True))
        spread = max(meas) / min(meas) - 1 if meas else float("nan")
        lines.append(f"{name:28s} {cells:>48s} {spread:>7.1%} {pred[0] * 1e3:9.2f} {pred[1] * 1e3:9.2f} "
                     f"{pred[1] / pred[0]:6.3f}")
    probe = [yaml.safe_load(p.read_text()).get("host_probe_s") for p in (prof_a, prof_b)]
    lines.append("host probe while calibrating: " + ", ".join(
        f"{n} {'-' if x is None else f'{x * 1e3:.3f} ms'}" for n, x in zip("AB", probe, strict=True)))
    text = "\n".join(lines)
    write_text_atomic(out / "host_drift.txt", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    raise SystemExit(main())
