"""One routed expert's FP8 GEMMs against bare `torch._scaled_mm` on the same shapes, in the same run.

    python benchmarks/expert_gemm.py --out results/expert_gemm.json            # an H100: paper expert
    python benchmarks/expert_gemm.py --quick --out /tmp/expert_gemm.json       # CPU smoke run (tiny)

The expert is `moe.model`'s (one `paper` expert: SwiGLU 7168 -> 18432 -> 7168, w1 and w3 as one GEMM of
36864 outputs) on `--tokens` rows that arrive as FP8 payload + scales, as from the dispatch wire.
Rows of the table:
  expert.w13 / expert.w2   `fp8_linear` exactly as the expert calls it (incl. its scale-layout work)
  bare.w13 / bare.w2       the same GEMM kernel on operands prepared beforehand: `torch._scaled_mm`
                           with the same scale recipe (blockwise or rowwise), or torch.mm of float32
                           operands on the dequant path (CPU)
  tensorwise.*             `torch._scaled_mm` with one scale per tensor (GPU only): the ceiling of the
                           hardware_facts.md table, for reference
  quant.input              quantizing the tokens per 128 channels (the sender's cost before dispatch)
  quant.swiglu             silu(w1 x) * (w3 x) and its quantization for w2 (inside the expert)
  expert.total             the whole `expert_forward` (GEMMs + quant.swiglu)
TFLOP/s count 2 M K N per GEMM. The goal (issue 5): expert GEMMs >= 80% of bare (ratio = bare time /
expert GEMM time). Timing: CUDA events around each call on a GPU (perf_counter on a CPU), `--warmup`
calls first, the median of `--repeats`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe.model import linear  # noqa: E402
from moe.model.ffn import SwiGLUBank, swiglu_quant  # noqa: E402
from moe.model.fp8 import quantize_act  # noqa: E402
from moe.model.model import hidden_states  # noqa: E402
from moe.result import write_json_atomic  # noqa: E402
from moe.spec import load_scenario  # noqa: E402

TARGET_RATIO = 0.8
FULL = {"model": "paper", "tokens": 4096, "warmup": 10, "repeats": 50}
QUICK = {"model": "tiny", "tokens": 64, "warmup": 2, "repeats": 5}


def time_op(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of fn(), one sample per call, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()  # host waits for this call only; the next one starts on an idle GPU
            samples.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return samples


def bare_operands(path: str, xa, w, device: torch.device):
    """The GEMM kernel of `path` on operands prepared ahead of time: what fp8_linear costs without its
    own preparation."""
    if path == "blockwise":
        a, b, sa, sb = xa.q_TD, w.q_NK.t(), xa.scale_TG.t().contiguous().t(), w.scale.t()
        return lambda: torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    if path == "rowwise":
        q_w, sb = linear._rowwise_weight(w)
        row = xa.scale_TG.amax(dim=1, keepdim=True)
        q_x = (xa.dequantize(torch.float32) / row).to(torch.float8_e4m3fn)
        return lambda: torch._scaled_mm(q_x, q_w.t(), scale_a=row, scale_b=sb, out_dtype=torch.bfloat16)
    a, b = xa.dequantize(torch.float32), w.dequantize(torch.float32).t().contiguous()
    return lambda: torch.mm(a, b)


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model = load_scenario({"model": {"preset": args.model}}, check=False).model
    path = linear.gemm_path(device) if args.path == "auto" else args.path
    bank = SwiGLUBank(model, 0, model.dense_layers, "expert", [0], model.expert_hidden, device)
    w13s, w2 = bank.fp8_w13[0], bank.fp8_w2[0]
    x = hidden_states(model, args.tokens, 0, device=device)
    xa = quantize_act(x)
    h = torch.cat([linear.fp8_linear(xa, w, torch.bfloat16, path) for w in w13s], dim=-1)
    ha = swiglu_quant(h)
    t, d, f = args.tokens, model.hidden, model.expert_hidden
    ops = {}
    for i, w in enumerate(w13s):  # one fused w13 GEMM when expert_hidden is a multiple of 128
        n, suffix = w.q_NK.shape[0], "" if len(w13s) == 1 else str(i)
        ops[f"expert.w13{suffix}"] = ((t, d, n), lambda w=w: linear.fp8_linear(xa, w, torch.bfloat16, path))
        ops[f"bare.w13{suffix}"] = ((t, d, n), bare_operands(path, xa, w, device))
    ops["expert.w2"] = ((t, f, d), lambda: linear.fp8_linear(ha, w2, torch.bfloat16, path))
    ops["bare.w2"] = ((t, f, d), bare_operands(path, ha, w2, device))
    if device.type == "cuda":
        one = torch.ones((), device=device)

        def tensorwise(a, b):
            return lambda: torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        for name, a, b in (("tensorwise.w13", xa.q_TD, bank.w13[0]), ("tensorwise.w2", ha.q_TD, bank.w2[0])):
            ops[name] = ((a.shape[0], a.shape[1], b.shape[0]), tensorwise(a, b))
    ops["quant.input"] = (None, lambda: quantize_act(x))
    ops["quant.swiglu"] = (None, lambda: swiglu_quant(h))
    ops["expert.total"] = ((t, d, 2 * f), lambda: bank(0, xa, torch.bfloat16, path))
    if args.compile:
        try:
            compiled = torch.compile(swiglu_quant)
            compiled(h)
            ops["quant.swiglu.compiled"] = (None, lambda: compiled(h))
        except Exception as err:  # report, do not fail the benchmark: compile is an option being explored
            print(f"torch.compile of swiglu_quant failed: {type(err).__name__}: {err}", file=sys.stderr)
    rows = []
    for name, (shape, fn) in ops.items():
        samples = time_op(fn, device, args.warmup, args.repeats)
        med = statistics.median(samples)
        flops = None
        if shape is not None:
            m, k, n = shape
            flops = 2 * m * k * n if name != "expert.total" else 2 * m * d * 2 * f + 2 * m * f * d
        rows.append({"name": name, "mkn": list(shape) if shape else None, "median_s": med,
                     "min_s": min(samples), "max_s": max(samples), "repeats": len(samples),
                     "TFLOPS": flops / med / 1e12 if flops else None})
    by = {r["name"]: r for r in rows}

    def total(prefix: str) -> float:
        return sum(r["median_s"] for r in rows if r["name"].startswith(prefix + ".w"))

    gemm_flops = 2 * t * d * 2 * f + 2 * t * f * d
    expert_s, bare_s = total("expert"), total("bare")
    summary = {
        "expert_gemm_s": expert_s, "bare_gemm_s": bare_s,
        "expert_gemm_TFLOPS": gemm_flops / expert_s / 1e12, "bare_gemm_TFLOPS": gemm_flops / bare_s / 1e12,
        "ratio_expert_over_bare": bare_s / expert_s,
        "expert_total_TFLOPS": gemm_flops / by["expert.total"]["median_s"] / 1e12,
        "quant_swiglu_fraction_of_expert": by["quant.swiglu"]["median_s"] / by["expert.total"]["median_s"],
        "quant_input_s": by["quant.input"]["median_s"],
        "target_ratio": TARGET_RATIO,
        "meets_target": bare_s / expert_s >= TARGET_RATIO,
    }
    if device.type == "cuda":
        summary["tensorwise_gemm_TFLOPS"] = gemm_flops / total("tensorwise") / 1e12
    return {
        "benchmark": "expert_gemm", "model": args.model, "tokens": t, "hidden": d, "expert_hidden": f,
        "gemm_path": path, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "cuda": torch.version.cuda, "warmup": args.warmup,
        "rows": rows, "summary": summary,
    }


def table(report: dict) -> str:
    lines = [f"expert GEMMs: model {report['model']}, {report['tokens']} tokens, path {report['gemm_path']}, "
             f"{report['device']}, torch {report['torch']}",
             f"{'op':<22} {'M x K x N':>22} {'median us':>11} {'TFLOP/s':>9}"]
    for r in report["rows"]:
        mkn = " x ".join(map(str, r["mkn"])) if r["mkn"] else ""
        tf = f"{r['TFLOPS']:.1f}" if r["TFLOPS"] is not None else ""
        lines.append(f"{r['name']:<22} {mkn:>22} {r['median_s'] * 1e6:>11.1f} {tf:>9}")
    s = report["summary"]
    lines.append(f"expert GEMMs {s['expert_gemm_TFLOPS']:.1f} TFLOP/s vs bare {s['bare_gemm_TFLOPS']:.1f}: "
                 f"{100 * s['ratio_expert_over_bare']:.1f}% (target >= {100 * TARGET_RATIO:.0f}%)")
    lines.append(f"whole expert {s['expert_total_TFLOPS']:.1f} TFLOP/s; swiglu+quant "
                 f"{100 * s['quant_swiglu_fraction_of_expert']:.1f}% of its time; input quantization "
                 f"{s['quant_input_s'] * 1e6:.1f} us")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model preset (default paper; tiny with --quick)")
    p.add_argument("--tokens", type=int, help="rows the expert receives (default 4096; 64 with --quick)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--path", default="auto", choices=["auto", *linear.GEMM_PATHS])
    p.add_argument("--warmup", type=int, help="untimed calls per op (default 10; 2 with --quick)")
    p.add_argument("--repeats", type=int, help="timed calls per op, median reported (default 50; 5 with --quick)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(swiglu_quant)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 64 tokens, few repeats")
    p.add_argument("--out", required=True, help="JSON report path")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    report = run(args)
    print(table(report))
    write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
