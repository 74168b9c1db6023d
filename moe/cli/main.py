"""`moetb`: thin entry points. Each command loads the scenario, calls one library function, writes output.

Exit codes: 0 success; 2 invalid input (one line naming the key path and value); 1 failure while running.
Logs and progress go to stderr; with --json, stdout holds one JSON object and nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

from moe.errors import BackendUnavailable, RunFailure, SpecError


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="scenario YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one scenario key (repeatable); the value is read as YAML")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moetb",
                                     description="Testbed for large-scale expert parallelism in MoE models")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one scenario on a backend")
    _add_spec_args(p)
    p.add_argument("--backend", default="sim", help="sim | emu | real (default sim)")
    p.add_argument("--out", help="output folder for result.json and trace.json (default results/<name>)")
    p.add_argument("--ranks", type=int, help="emu/real: start this many ranks when not under a launcher")

    p = sub.add_parser("describe", help="the resolved scenario and its derived quantities")
    _add_spec_args(p)

    p = sub.add_parser("place", help="placement, memory, traffic and the most loaded link per strategy")
    _add_spec_args(p)

    p = sub.add_parser("validate", help="run two backends and print predicted vs measured")
    _add_spec_args(p)
    p.add_argument("--backends", default="sim,emu", help="predictor,measurer (default sim,emu)")
    p.add_argument("--ranks", type=int, help="ranks for the measuring backend")
    p.add_argument("--out", help="folder for both results and the comparison")

    p = sub.add_parser("sweep", help="a base scenario plus axes -> one table of Results")
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--backend", help="override the sweep file's backend")
    p.add_argument("--jobs", type=int, default=1, help="parallel points (process pool)")
    p.add_argument("--out", help="output folder for the table")
    p.add_argument("--retry-failed", action="store_true", help="rerun points recorded as failed")

    p = sub.add_parser("calibrate", help="microbenchmarks -> hardware profile YAML")
    p.add_argument("--backend", default="emu", help="emu | real")
    p.add_argument("--out", required=True, help="profile YAML to write")
    p.add_argument("--ranks", type=int, help="ranks to measure with")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    p.add_argument("--scenario", action="append", default=[], metavar="SPEC",
                   help="real: time the runtime's operations for this scenario's model (repeatable; default: "
                        "the paper and deepseek-v3 presets)")

    p = sub.add_parser("plot", help="figures (PNG) from a sweep's result table")
    p.add_argument("results", help="result table (Parquet or CSV) or sweep output folder")
    p.add_argument("--out", help="folder for the PNG files")
    return parser


def _lazy(module: str, attr: str):
    """A library function from a module that may not be built yet."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            raise BackendUnavailable(f"{module} is not built yet") from None
        raise BackendUnavailable(f"{module} needs the Python package {err.name!r}, which is not installed") from None
    return getattr(mod, attr)


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data) if args.json else text)


def cmd_describe(args) -> int:
    from moe.spec import load_scenario, scenario_dict, spec_hash
    from moe.spec.sizes import derived

    s = load_scenario(args.spec, args.overrides)
    data = {"name": s.name, "spec_hash": spec_hash(s), "spec": scenario_dict(s), "derived": derived(s)}
    d = data["derived"]
    mem = d["memory_per_gpu"]
    text = "\n".join([
        f"{s.name} ({data['spec_hash']}): model {s.model.preset}, cluster {s.cluster.preset} "
        f"{s.cluster.nodes} x {s.cluster.gpus_per_node} GPUs, placement {s.placement.strategy}",
        f"  parameters {d['params_total'] / 1e9:.1f} B total, {d['params_activated_per_token'] / 1e9:.1f} B "
        f"activated per token; one expert {d['expert_params'] / 1e6:.1f} M ({d['expert_weight_bytes'] / 1e6:.1f} MB)",
        f"  KV cache per token: {d['kv_cache_bytes_per_token']:,} B ({s.model.attention.kind}); MLA "
        f"{d['kv_cache_bytes_per_token_mla']:,} B vs MHA {d['kv_cache_bytes_per_token_mha']:,} B "
        f"({d['kv_mla_over_mha']:.1%})",
        f"  dispatch {d['dispatch_bytes_per_token']:,} B/token ({s.schedule.dispatch_dtype}), combine "
        f"{d['combine_bytes_per_token']:,} B/token ({s.schedule.combine_dtype})",
        f"  memory per GPU {mem['total_bytes'] / 1e9:.2f} GB of {d['memory_capacity_bytes'] / 1e9:.0f} GB: "
        + ", ".join(f"{k.removesuffix('_bytes')} {v / 1e9:.2f}" for k, v in mem.items() if k != "total_bytes"),
    ])
    _emit(args, data, text)
    return 0


def _write_outputs(out_dir: Path, output) -> None:
    from moe.result import write_json_atomic, write_trace

    write_json_atomic(out_dir / "result.json", output.result.to_dict())
    write_trace(out_dir / "trace.json", output.trace)


def _run_backend(name: str, scenario, ranks: int | None):
    from moe.backends import load_backend

    backend = load_backend(name)
    t0 = time.perf_counter()
    output = backend.run(scenario, ranks=ranks)
    if output is not None and not output.result.wall_s:
        output.result.wall_s = time.perf_counter() - t0
    return output


def cmd_run(args) -> int:
    from moe.result.summary import format_summary
    from moe.spec import load_scenario

    s = load_scenario(args.spec, args.overrides)
    output = _run_backend(args.backend, s, args.ranks)
    if output is None:  # a non-writing rank of a distributed run
        return 0
    out_dir = Path(args.out or Path("results") / s.name)
    _write_outputs(out_dir, output)
    _emit(args, output.result.to_dict(), format_summary(output.result) + f"\n  wrote {out_dir}/result.json, trace.json")
    return 0


def cmd_validate(args) -> int:
    from moe.result import write_json_atomic
    from moe.result.summary import compare, format_comparison
    from moe.spec import load_scenario

    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    if len(names) != 2:
        raise SpecError("--backends", args.backends, "expected two backends, predictor,measurer")
    s = load_scenario(args.spec, args.overrides)
    predicted = _run_backend(names[0], s, None)
    measured = _run_backend(names[1], s, args.ranks)
    if predicted is None or measured is None:
        return 0
    rows = compare(predicted.result, measured.result)
    if args.out:
        out = Path(args.out)
        for name, o in zip(names, (predicted, measured), strict=True):
            _write_outputs(out / name, o)
        write_json_atomic(out / "validate.json", rows)
    _emit(args, {"predicted": predicted.result.to_dict(), "measured": measured.result.to_dict(), "rows": rows},
          format_comparison(predicted.result, measured.result))
    return 0


def cmd_place(args) -> int:
    from moe.spec import load_scenario

    s = load_scenario(args.spec, args.overrides)
    report, text = _lazy("moe.placement.report", "place_report")(s)
    _emit(args, report, text)
    return 0


def cmd_sweep(args) -> int:
    run_sweep = _lazy("moe.sweep", "run_sweep")
    return run_sweep(args.sweep, backend=args.backend, jobs=args.jobs, out=args.out, retry_failed=args.retry_failed)


def cmd_calibrate(args) -> int:
    from moe.backends import load_backend
    from moe.profile import write_profile

    backend = load_backend(args.backend)
    if not hasattr(backend, "calibrate"):
        raise BackendUnavailable(f"backend {args.backend!r} has no calibration")
    if args.scenario:
        if args.backend != "real":
            raise SpecError("--scenario", args.scenario[0], "is read by `moetb calibrate --backend real` only")
        for path in args.scenario:
            if not Path(path).is_file():
                raise SpecError("--scenario", path, "no such file")
        profile = backend.calibrate(ranks=args.ranks, quick=args.quick, scenarios=tuple(args.scenario))
    else:
        profile = backend.calibrate(ranks=args.ranks, quick=args.quick)
    if profile is None:  # a non-writing rank
        return 0
    write_profile(args.out, profile)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_plot(args) -> int:
    return _lazy("moe.plots", "plot_results")(args.results, out=args.out)


COMMANDS = {"run": cmd_run, "describe": cmd_describe, "place": cmd_place, "validate": cmd_validate,
            "sweep": cmd_sweep, "calibrate": cmd_calibrate, "plot": cmd_plot}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except SpecError as err:
        print(f"moetb {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (BackendUnavailable, RunFailure) as err:
        print(f"moetb {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"moetb {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: one line, the traceback only on request
        if os.environ.get("MOETB_DEBUG"):
            raise
        print(f"moetb {args.command}: failed: {type(err).__name__}: {err} (set MOETB_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
